"""`facenet align RAW OUT`: detect, landmark and warp every face of a photo tree."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..choices import DEFAULT_MODEL, MAX_SIZE, MIN_SIZE, DefaultDetector, Executor, FacePolicy, Fallback, Landmarks, Upsample
# ExecutorOption, AddressOption, WorkersOption: declared once in _app.py, for every batch command.
from ._app import (MinFaceOption, AddressOption, DetectorOption, ExecutorOption, FacesOption, FallbackDirOption,  # noqa: F401
                   FallbackOption, JsonOption, ModelOption, QuietOption, UpsampleOption, WorkersOption, command,
                   console, open_executor, print_json)

if TYPE_CHECKING:
    from ..align.job import AlignJob, AlignReport
    from ..executors import Executor as ExecutorProtocol

def model_spec(model: str, landmarks: Optional[str], size: Optional[int]):
    """The model's own spec unless --landmarks names another; --size overrides the size."""
    from ..align.specs import get_spec
    from ..pipeline.face_pipeline import resolve_record  # checkpoints carry their own spec

    if landmarks:
        return get_spec(landmarks, size)
    spec = resolve_record(model).align
    return spec.with_size(size) if size else spec


@command
def align_command(
    raw: Annotated[Path, typer.Argument(
        help="Folder of <person>/<image> photos. Links to files are followed; links to folders are not "
        "entered; hidden files and folders, special files and names with control characters are skipped, "
        "each with a row in the report.")],
    out: Annotated[Path, typer.Argument(
        help="Output folder, outside RAW; RAW's layout is mirrored as PNG files, with align-report.csv "
        "(one outcome per entry of RAW) and align-spec.json.")],
    model: ModelOption = DEFAULT_MODEL,
    landmarks: Annotated[Optional[Landmarks], typer.Option(
        "--landmarks", help="Alignment spec instead of the model's.")] = None,
    size: Annotated[Optional[int], typer.Option(
        "--size", min=MIN_SIZE, max=MAX_SIZE,
        help=f"Output side in pixels, {MIN_SIZE}-{MAX_SIZE} (default: the spec's, e.g. 96 or 150).")] = None,
    detector: DetectorOption = DefaultDetector,
    upsample: UpsampleOption = Upsample.auto,
    min_face: MinFaceOption = None,
    faces: FacesOption = FacePolicy.largest,
    fallback: FallbackOption = Fallback.none,
    fallback_dir: FallbackDirOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = Executor.local,
    address: AddressOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Align every face under RAW into OUT for a model's template.

    Every entry of RAW gets one row in OUT/align-report.csv.

    Links to files are followed; links to folders are not entered.

    Hidden files and folders, special files and names with control characters are skipped, each with a row.

    Resumable: rerun the same command after a kill or a full disk; finished files keep their outcome.

    Exit 0 when the run finished (files without a face are outcomes), 1 when it could not (full disk), 2 on usage.

    With --executor ray each file is a task on a Ray cluster; RAW and OUT must then be on storage every node sees. The outputs are the same as a local run's.

    Example: facenet align ~/photos aligned/ --workers 2
    """
    from ..align.job import AlignJob

    job = AlignJob(
        spec=model_spec(model, landmarks.value if landmarks else None, size),
        detector=detector.value,
        upsample=upsample.value,
        min_face=min_face,
        faces=faces.value,
        fallback=fallback.value,
        fallback_dir=str(fallback_dir) if fallback_dir else None,
    )
    with open_executor(executor, address, workers or (1 if executor == Executor.local else None)) as runner:
        report = run_with_progress(raw, out, job, executor=runner, quiet=quiet)
    if as_json:
        print_json(report.summary())
    else:
        print_summary(report)


def run_with_progress(raw: Path, out: Path, job: "AlignJob", workers: int | None = None,
                      executor: "ExecutorProtocol | None" = None, quiet: bool = False) -> "AlignReport":
    """`align_tree` with a progress bar on stderr, shown once the folders are checked (a usage
    error stays one line); the same bar for a Ray run, advanced as its outcomes arrive."""
    from ..align.job import align_tree
    from ._progress import CountingProgress

    with CountingProgress("Aligning", "entries/s", quiet) as bar:
        return align_tree(raw, out, job, workers, executor=executor, progress=bar)


def print_summary(report: "AlignReport") -> None:
    """Counts per outcome, done now and in earlier runs; they add up to the entries of RAW."""
    from rich.table import Table
    from rich.text import Text

    from ..formats.aligned import STATUSES

    now, earlier = report.counts_now, report.counts_earlier
    table = Table(title=f"facenet align: {report.total} entries in {report.seconds:.1f} s")
    table.add_column("outcome")
    table.add_column("now", justify="right")
    table.add_column("earlier runs", justify="right")
    table.add_column("total", justify="right")
    for status in STATUSES:
        if now[status] or earlier[status]:
            table.add_row(status, str(now[status]), str(earlier[status]), str(now[status] + earlier[status]))
    table.add_row(*(Text(cell, style="bold") for cell in ("total", str(sum(now.values())),
                                                          str(sum(earlier.values())), str(report.total))))
    console.print(table)
    console.print(f"Aligned faces are in {report.out_dir}; every entry's outcome is in {report.report_path}.")
