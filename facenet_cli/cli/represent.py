"""`facenet represent ALIGNED OUT`: embeddings of an aligned tree in OpenFace's layout."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..choices import DEFAULT_MODEL, DefaultDetector, Device, Executor, FacePolicy, Fallback, Precision, Upsample
from ._app import (MinFaceOption, AddressOption, BatchSizeOption, DetectorOption, DeviceOption, ExecutorOption, FacesOption,
                   FallbackDirOption, FallbackOption, FlipOption, JsonOption, ModelOption, PrecisionOption, QuietOption,
                   TTAOption, UpsampleOption, WorkersOption, command, console, err_console, given_options,
                   load_pipeline, open_executor, print_json)


@command
def represent_command(
    ctx: typer.Context,
    aligned: Annotated[Path, typer.Argument(help="Aligned folder from `facenet align` (or photos, with --photos).")],
    out: Annotated[Path, typer.Argument(help="Output folder: labels.csv, reps.csv, reps.npy, meta.json.")],
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = Device.auto,
    batch_size: BatchSizeOption = 32,
    flip: FlipOption = False,
    precision: PrecisionOption = Precision.auto,
    tta: TTAOption = 0,
    photos: Annotated[bool, typer.Option(
        "--photos", help="ALIGNED holds raw photos: align them first (into OUT/aligned) with the model's own spec "
        "and the detection options below, as `facenet align` does.")] = False,
    workers: WorkersOption = None,
    detector: DetectorOption = DefaultDetector,
    upsample: UpsampleOption = Upsample.auto,
    min_face: MinFaceOption = None,
    faces: FacesOption = FacePolicy.largest,
    fallback: FallbackOption = Fallback.none,
    fallback_dir: FallbackDirOption = None,
    executor: ExecutorOption = Executor.local,
    address: AddressOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Embed every aligned face into OUT (labels.csv + reps.csv + reps.npy + meta.json).

    Every image gets one outcome (embedded, unreadable, wrong-size, bad-name); the counts add up
    to the images listed. Exit 0 when something was written.

    With --executor ray, a pool of Ray actors (one per GPU of the cluster, else one per CPU) holds the network once each; with --photos the alignment runs as Ray tasks. ALIGNED and OUT must then be on storage every node sees. Embeddings equal a local run's within float rounding (1e-5).

    Example: facenet represent aligned/ reps/ --batch-size 64
    """
    from ..errors import UsageError

    detection = given_options(ctx, "detector", "upsample", "min_face", "faces", "fallback", "fallback_dir")
    if detection and not photos:  # they would be silently ignored: ALIGNED holds crops already
        raise UsageError(f"{detection[0]} applies only with --photos (ALIGNED holds aligned faces otherwise); add "
                         "--photos or drop it.")
    # Validate everything (options, model file) before Ray starts; on Ray the driver only
    # checks the weights (engine auto loads no network until asked), the actors load it.
    pipeline = load_pipeline(model, verify=False, device=device, batch_size=batch_size, flip=flip, precision=precision,
                             tta=tta, engine="auto" if executor == Executor.ray else "torch", detector=detector,
                             upsample=upsample, min_face=min_face, faces=faces, fallback=fallback,
                             fallback_dir=fallback_dir)
    _ = pipeline.embedder  # the weights are checked (and, locally, the network loaded) before any work
    with open_executor(executor, address, workers or (1 if executor == Executor.local else None)) as runner:
        _represent(aligned, out, pipeline, photos, runner, as_json, quiet)


def _represent(aligned: Path, out: Path, pipeline, photos: bool, runner, as_json: bool,
               quiet: bool = False) -> None:
    from ..align.job import AlignJob
    from ..pipeline.represent import represent_photos, represent_tree
    from ._progress import CountingProgress

    align_summary = None
    if photos:
        from .align import print_summary

        # One bar, two stages: locally the crops are embedded while the alignment goes on.
        with CountingProgress("Aligning", "entries/s", quiet) as bar:
            align_report, report = represent_photos(aligned, out, pipeline, AlignJob.of(pipeline), executor=runner,
                                                    progress=bar)
        if as_json:
            align_summary = align_report.summary()
        else:
            print_summary(align_report)
    else:
        with CountingProgress("Embedding", "faces/s", quiet) as bar:
            report = represent_tree(aligned, out, pipeline, executor=runner, progress=bar)
    if as_json:
        print_json({**report.to_dict(), **({"align": align_summary} if align_summary else {})})
        return
    from ..formats.aligned import printable_name

    for path, status, reason in report.problems:
        err_console.print(f"{status} {printable_name(path)}: {reason}", markup=False, highlight=False)
    counts = report.counts
    console.print(f"{report.count} embeddings ({report.model}, {report.dimension}-d) written to {out} in "
                  f"{report.seconds:.1f} s; {counts['unreadable']} unreadable, {counts['wrong-size']} wrong size, "
                  f"{counts['bad-name']} bad names; {report.total} images in all.", markup=False, highlight=False)
