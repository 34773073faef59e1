"""`facenet compare IMG IMG ...`: squared L2 distances between every pair of faces."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..choices import DEFAULT_MODEL, DefaultDetector, Device, FacePolicy, Fallback, Precision, Upsample
from ._app import (MinFaceOption, DetectorOption, DeviceOption, FacesOption, FallbackDirOption, FallbackOption, FlipOption,
                   JsonOption, ModelOption, PrecisionOption, TTAOption, UpsampleOption, command, console,
                   err_console, load_pipeline, print_json)

if TYPE_CHECKING:
    from ..recognition.compare import Comparison


@command
def compare_command(
    images: Annotated[list[Path], typer.Argument(help="Two or more photos (a photo with several faces counts each).")],
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = Device.auto,
    flip: FlipOption = False,
    detector: DetectorOption = DefaultDetector,
    upsample: UpsampleOption = Upsample.auto,
    min_face: MinFaceOption = None,
    faces: FacesOption = FacePolicy.all,
    fallback: FallbackOption = Fallback.none,
    fallback_dir: FallbackDirOption = None,
    precision: PrecisionOption = Precision.auto,
    tta: TTAOption = 0,
    as_json: JsonOption = False,
) -> None:
    """Squared L2 distances between the faces of photos, with a same/different verdict.

    0 means the same picture, 4 opposite; the verdict uses the model's threshold. Photos without a
    face are reported and the others still compared. Exit 3 when no photo holds a face, 1 when only one face was found.

    Example: facenet compare lennon-1.jpg lennon-2.jpg clapton-1.jpg
    """
    from ..recognition.compare import check_faces, compare_photos
    # engine="auto": for a handful of faces on the CPU, dlib's own network instead of importing
    # PyTorch, whose import alone takes longer than the whole comparison.
    pipeline = load_pipeline(model, device=device, flip=flip, precision=precision, tta=tta, engine="auto",
                             detector=detector, upsample=upsample, min_face=min_face, faces=faces, fallback=fallback,
                             fallback_dir=fallback_dir)
    pipeline.embedder  # first: a bad --precision/--device is refused before detection loads
    result = compare_photos([str(p) for p in images], pipeline)
    if as_json:
        print_json(result.to_dict())
    else:
        print_comparison(result)
    # Printed above first, so scripts still get the per-photo problems.
    check_faces(result)


def print_comparison(result: "Comparison") -> None:
    from rich.table import Table

    table = Table(title=f"{result.model}: squared L2 distance, same person at <= {result.threshold:.3f}")
    for column in ("face", "face", "distance", "verdict"):
        table.add_column(column, justify="right" if column == "distance" else "left", overflow="fold")
    for a, b, distance, same in result.pairs():
        table.add_row(a.label + (" (fallback)" if a.fallback else ""), b.label + (" (fallback)" if b.fallback else ""),
                      f"{distance:.3f}", "same" if same else "different")
    console.print(table)
    for photo, reason in result.problems.items():
        err_console.print(f"{photo}: {reason}", markup=False)
