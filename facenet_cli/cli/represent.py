"""`facenet represent ALIGNED OUT`: embeddings of an aligned tree in OpenFace's layout."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..catalogue import DEFAULT_MODEL
from ..jobs import AlignJob
from ..represent import represent_tree
from ._app import (BatchSizeOption, DeviceOption, FlipOption, ModelOption, command, console, err_console,
                   load_embedder)
from ._progress import progress_bar
from .align import print_summary, run_with_progress


@command
def represent_command(
    aligned: Annotated[Path, typer.Argument(help="Aligned folder from `facenet align` (or photos, with --photos).")],
    out: Annotated[Path, typer.Argument(help="Output folder: labels.csv, reps.csv, reps.npy, meta.json.")],
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 32,
    flip: FlipOption = False,
    photos: Annotated[bool, typer.Option(
        "--photos", help="ALIGNED holds raw photos: align them first (into OUT/aligned) with the model's own spec.")] = False,
    workers: Annotated[int, typer.Option(help="With --photos: alignment processes.")] = 1,
) -> None:
    """Embed every aligned face into OUT (labels.csv + reps.csv + reps.npy).

    Example: facenet represent aligned/ reps/ --batch-size 64
    """
    embedder = load_embedder(model, device, batch_size, flip)
    if photos:
        job = AlignJob(spec=embedder.record.align)
        print_summary(run_with_progress(aligned, out / "aligned", job, workers))
        aligned = out / "aligned"
    with progress_bar() as progress:
        task = progress.add_task("Embedding", total=None, rate="")
        started, done = time.perf_counter(), [0]

        def on_batch(count: int) -> None:
            done[0] += count
            progress.update(task, advance=count, rate=f"{done[0] / max(time.perf_counter() - started, 1e-9):.1f} faces/s")

        report = represent_tree(aligned, out, embedder, on_start=lambda n: progress.update(task, total=n),
                                on_batch=on_batch)
    for path, reason in report.unreadable:
        err_console.print(f"skipped {path}: {reason}", markup=False)
    console.print(f"{report.count} embeddings ({embedder.record.name}, {embedder.record.embedding_dim}-d) "
                  f"written to {out} in {report.seconds:.1f} s; {len(report.unreadable)} unreadable; "
                  f"{report.total} images in all.")
