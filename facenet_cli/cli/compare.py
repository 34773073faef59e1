"""`facenet compare IMG IMG ...`: squared L2 distances between every pair of faces."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..align import FaceAligner
from ..catalogue import DEFAULT_MODEL
from ..compare import Comparison, compare_photos
from ..detect import parse_upsample
from ..errors import UsageError
from ._app import DeviceOption, FlipOption, ModelOption, command, console, err_console, load_embedder


@command
def compare_command(
    images: Annotated[list[Path], typer.Argument(help="Two or more photos (a photo with several faces counts each).")],
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    flip: FlipOption = False,
    upsample: Annotated[str, typer.Option(help="Detector upsampling 0-4, or auto.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Squared L2 distances between the faces of photos (0 = same picture, 4 = opposite).

    Example: facenet compare lennon-1.jpg lennon-2.jpg clapton-1.jpg
    """
    embedder = load_embedder(model, device, flip=flip)
    aligner = FaceAligner(embedder.record.align, upsample=parse_upsample(upsample), faces="all")
    result = compare_photos([str(p) for p in images], aligner, embedder)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_comparison(result)
    if len(result.faces) < 2:
        # Printed above first, so scripts still get the per-photo problems.
        raise UsageError(f"compare needs at least two faces and found {len(result.faces)}; "
                         "give two or more photos with faces.")


def print_comparison(result: Comparison) -> None:
    table = Table(title=f"{result.model}: squared L2 distance, same person at <= {result.threshold:.3f}")
    for column in ("face", "face", "distance", "verdict"):
        table.add_column(column, justify="right" if column == "distance" else "left", overflow="fold")
    for a, b, distance, same in result.pairs():
        table.add_row(a.label, b.label, f"{distance:.3f}", "same" if same else "different")
    console.print(table)
    for photo, reason in result.problems.items():
        err_console.print(f"{photo}: {reason}", markup=False)
