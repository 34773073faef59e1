"""`facenet demo`: the whole pipeline on a photo shipped inside an installed dependency."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from ..align_specs import get_spec
from ..catalogue import DEFAULT_MODEL
from ..errors import UsageError
from ..jobs import AlignJob
from ._app import command, console
from .align import print_summary, run_with_progress


def sample_photo() -> Path:
    """matplotlib ships a portrait of Grace Hopper: a face every install has, no download."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.exists():
        raise UsageError(f"The demo photo {path} is missing; reinstall matplotlib.")
    return path


@command
def demo_command(
    out: Annotated[Path, typer.Option(help="Where the demo writes its results.")] = Path("demo-out"),
) -> None:
    """Align a face from a photo that ships with matplotlib and say where the result went.

    Example: facenet demo --out demo-out
    """
    raw = out / "raw" / "Grace_Hopper"
    raw.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_photo(), raw / "Grace_Hopper_0001.jpg")
    job = AlignJob(spec=get_spec("dlib-chip"))
    report = run_with_progress(raw.parent, out / "aligned", job, workers=1)
    print_summary(report)
    console.print(f"The aligned face for {DEFAULT_MODEL} is {out / 'aligned' / report.outcomes[0].outputs[0]}.")
