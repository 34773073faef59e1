"""`facenet align RAW OUT`: detect, landmark and warp every face of a photo tree."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..align import FACE_POLICIES, FALLBACKS
from ..align_specs import SPECS, get_spec
from ..catalogue import DEFAULT_MODEL
from ..detect import DETECTORS, parse_upsample
from ..errors import UsageError
from ..jobs import REPORT_FILE, STATUSES, AlignJob, AlignReport, align_tree
from ._app import command, console
from ._progress import progress_bar


def model_spec(model: str, landmarks: Optional[str], size: Optional[int]):
    """The model's own spec unless --landmarks names another; --size overrides the size."""
    if landmarks:
        return get_spec(landmarks, size)
    from ..hub import resolve_model  # checkpoints carry their own spec

    spec = resolve_model(model).align
    return spec.with_size(size) if size else spec


def choice(value: str, allowed, option: str) -> str:
    if value not in allowed:
        raise UsageError(f"{option} must be one of {', '.join(allowed)}, not {value!r}.")
    return value


@command
def align_command(
    raw: Annotated[Path, typer.Argument(help="Folder of <person>/<image> photos.")],
    out: Annotated[Path, typer.Argument(help="Output folder; RAW's layout is mirrored as PNG files.")],
    model: Annotated[str, typer.Option(help="Align for this model's input (catalogue name or checkpoint).")] = DEFAULT_MODEL,
    landmarks: Annotated[Optional[str], typer.Option(
        help=f"Alignment spec instead of the model's: {', '.join(SPECS)}.")] = None,
    size: Annotated[Optional[int], typer.Option(help="Output side in pixels (default: the spec's, e.g. 96 or 150).")] = None,
    detector: Annotated[str, typer.Option(
        help="Face detector: hog (fast), cnn (dlib's MMOD: slower, finds turned faces), or hog+cnn (cnn only where hog finds nothing).")] = "hog",
    upsample: Annotated[str, typer.Option(help="Detector upsampling 0-4, or auto: 0 first, more only when no face is found.")] = "auto",
    faces: Annotated[str, typer.Option(help="Several faces: largest, center (nearest the image centre), center-only (only a face covering the centre; for centred datasets such as LFW), all, skip-multi.")] = "largest",
    fallback: Annotated[str, typer.Option(help="No face found: none (record it), or center (landmarks on the centre box, for centred datasets such as LFW).")] = "none",
    fallback_dir: Annotated[Optional[Path], typer.Option(help="No face found: align the same relative path from this folder instead (OpenFace style).")] = None,
    workers: Annotated[int, typer.Option(help="Processes; each loads the detector once.")] = 1,
) -> None:
    """Align every face under RAW into OUT for a model's template.

    Example: facenet align ~/photos aligned/ --workers 2
    """
    job = AlignJob(
        spec=model_spec(model, landmarks, size),
        detector=choice(detector, DETECTORS, "--detector"),
        upsample=parse_upsample(upsample),
        faces=choice(faces, FACE_POLICIES, "--faces"),
        fallback=choice(fallback, FALLBACKS, "--fallback"),
        fallback_dir=str(fallback_dir) if fallback_dir else None,
    )
    report = run_with_progress(raw, out, job, workers)
    print_summary(report)


def run_with_progress(raw: Path, out: Path, job: AlignJob, workers: int) -> AlignReport:
    with progress_bar() as progress:
        task = progress.add_task("Aligning", total=None, rate="")
        started = time.perf_counter()
        done = [0]

        def on_start(total: int) -> None:
            progress.update(task, total=total)

        def on_outcome(_outcome) -> None:
            done[0] += 1
            rate = done[0] / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, rate=f"{rate:.1f} img/s")

        return align_tree(raw, out, job, workers, on_outcome=on_outcome, on_start=on_start)


def print_summary(report: AlignReport) -> None:
    table = Table(title=f"facenet align: {report.total} files in {report.seconds:.1f} s")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for status in STATUSES:
        table.add_row(status, str(report.counts[status]))
    table.add_row("[bold]total", f"[bold]{report.total}")
    console.print(table)
    console.print(f"Aligned faces and the per-file report are in {report.out_dir} ({REPORT_FILE}).")
