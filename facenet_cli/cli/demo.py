"""`facenet demo`: the whole pipeline on a photo shipped inside an installed dependency."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..choices import DEFAULT_MODEL
from ..errors import UsageError
from ._app import QuietOption, command, console, load_pipeline


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
    quiet: QuietOption = False,
) -> None:
    """Align and compare faces made from a photo that ships with matplotlib; no files or network needed.

    Example: facenet demo --out demo-out
    """
    from PIL import Image, ImageEnhance, ImageOps

    from ..align.job import AlignJob
    from ..atomic import atomic_open
    from ..recognition.compare import compare_photos
    from .align import print_summary, run_with_progress
    from .compare import print_comparison

    raw = out / "photos" / "Grace_Hopper"
    photo = Image.open(sample_photo()).convert("RGB")
    variants = {
        "Grace_Hopper_0001.jpg": photo,
        "Grace_Hopper_0002_mirrored.jpg": ImageOps.mirror(photo),
        "Grace_Hopper_0003_dark_gray.jpg": ImageEnhance.Brightness(ImageOps.grayscale(photo)).enhance(0.5),
    }
    for name, image in variants.items():
        with atomic_open(raw / name) as fh:
            image.save(fh, format="JPEG", quality=92)

    pipeline = load_pipeline(DEFAULT_MODEL, flip=False, upsample="auto", faces="all")
    pipeline.embedder  # loaded first: a damaged weights file is one sentence before any work
    report = run_with_progress(raw.parent, out / "aligned", AlignJob.of(pipeline, faces="largest"), workers=1,
                               quiet=quiet)
    print_summary(report)
    result = compare_photos(sorted(raw.iterdir()), pipeline)
    print_comparison(result)
    console.print("Try `facenet compare` on photos of your own.")
