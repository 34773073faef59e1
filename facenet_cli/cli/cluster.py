"""`facenet cluster SOURCE OUT`: group faces by person, without labels or a number of people."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..choices import DEFAULT_MODEL, DefaultDetector, Executor, FacePolicy, Fallback, LinkMode, Precision, Upsample
from ._app import (PrecisionOption, MinFaceOption, AddressOption, BatchSizeOption, DetectorOption, DeviceOption, ExecutorOption, FacesOption,
                   FallbackOption, FlipOption, JsonOption, ModelOption, QuietOption, UpsampleOption, WorkersOption,
                   command, console, err_console, open_executor, pipeline_options, print_json)


@command
def cluster_command(
    source: Annotated[Path, typer.Argument(
        help="A `facenet represent` output (labels.csv), an aligned folder, or a folder of photos.")],
    out: Annotated[Path, typer.Argument(
        help="Output folder: clusters.csv, cluster-summary.json, contact-sheet.png (and links/ with --link).")],
    max_distance: Annotated[Optional[float], typer.Option(
        "--max-distance", metavar="D", help="Squared L2 distance under which clusters merge (average linkage); "
        "default: the model's calibrated clustering operating point.")] = None,
    neighbours: Annotated[int, typer.Option(
        "--neighbours", min=1, metavar="N", help="Neighbours kept per face in the neighbour graph.")] = 32,
    link: Annotated[Optional[LinkMode], typer.Option(
        "--link", help="Also write OUT/links/cluster-0001/... (and unknown/) with a symlink or hard link per face "
        "crop; rename a folder to the person's name and `facenet gallery add` it.")] = None,
    sheet_rows: Annotated[int, typer.Option("--sheet-rows", min=1, help="Contact sheet: clusters shown, largest first.")] = 20,
    sheet_columns: Annotated[int, typer.Option("--sheet-columns", min=1, help="Contact sheet: faces per row.")] = 12,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.auto,
    batch_size: BatchSizeOption = 32,
    flip: FlipOption = True,  # the calibrated threshold was chosen on --flip embeddings
    detector: DetectorOption = DefaultDetector,
    upsample: UpsampleOption = Upsample.auto,
    min_face: MinFaceOption = None,
    faces: FacesOption = FacePolicy.all,
    fallback: FallbackOption = Fallback.none,
    workers: WorkersOption = None,
    executor: ExecutorOption = Executor.local,
    address: AddressOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Group faces by person; faces that match no one go to `unknown`.

    Photos are aligned by --workers processes (or on Ray with --executor ray). Exit 3 when the photos hold no face.

    Example: facenet cluster reps/ clusters/ --link symlink   (or: facenet cluster photos/ clusters/)
    """
    from ..recognition.cluster import cluster_faces, cluster_name
    from ._progress import CountingProgress

    options = pipeline_options(model, precision=precision, device=device, flip=flip, batch_size=batch_size, detector=detector,
                               upsample=upsample, min_face=min_face, faces=faces, fallback=fallback)
    with open_executor(executor, address, workers) as runner, CountingProgress("Clustering", quiet=quiet) as bar:
        report = cluster_faces(source, out, max_distance=max_distance, neighbours=neighbours,
                               link=link.value if link else None, sheet_rows=sheet_rows, sheet_columns=sheet_columns,
                               pipeline=options, executor=runner, progress=bar)

    summary = report.to_dict()
    if as_json:
        print_json(summary)
        return
    from rich.table import Table

    table = Table(title=f"{summary['clusters']} clusters of {summary['faces']} faces "
                        f"(max distance {report.threshold:g}, {report.threshold_source})")
    table.add_column("cluster")
    table.add_column("faces", justify="right")
    table.add_column("first faces")
    shown = 15
    for label, size in enumerate(summary["sizes"][:shown]):
        members = [f for f, lab in zip(report.faces, report.labels) if lab == label][:3]
        table.add_row(cluster_name(label), str(size), ", ".join(m.path for m in members))
    if len(summary["sizes"]) > shown:
        table.add_row(f"... {len(summary['sizes']) - shown} more", str(sum(summary["sizes"][shown:])), "")
    table.add_row("unknown", str(summary["unknown"]), "faces that match no one")
    console.print(table)
    if report.photo_outcomes:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(report.photo_outcomes.items()))
        console.print(f"Photos: {sum(report.photo_outcomes.values())} files ({counts}).")
    for path in report.no_face[:10]:
        err_console.print(f"no face in {path}", markup=False)
    if len(report.no_face) > 10:
        err_console.print(f"... and {len(report.no_face) - 10} more files without a face "
                          f"(see {out / 'aligned' / 'align-report.csv'})", markup=False)
    if report.links_missing:
        err_console.print(f"{len(report.links_missing)} crops were not found, so they have no link "
                          f"(first: {report.links_missing[0]}).", markup=False)
    console.print(f"{summary['faces']} faces: {summary['clusters']} clusters, {summary['unknown']} unknown, "
                  f"in {report.seconds:.1f} s. Written: {', '.join(report.files.values())}", markup=False)
