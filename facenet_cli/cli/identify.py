"""`facenet identify GALLERY PHOTO|DIR ...`: who is in these photos, or `unknown`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..choices import DefaultDetector, Executor, IdentifyMethod, IndexUse, Precision, Upsample
from ._app import (PrecisionOption, MinFaceOption, AddressOption, DetectorOption, DeviceOption, ExecutorOption, GalleryArg, JsonOption, QuietOption, TopOption,
                   UpsampleOption, WorkersOption, command, console, err_console, given_options, open_executor,
                   pipeline_options, print_json, refuse_together)


@command
def identify_command(
    ctx: typer.Context,
    gallery: GalleryArg,
    photos: Annotated[list[Path], typer.Argument(help="Photos, or folders of photos; every face in them is answered.")],
    far: Annotated[Optional[float], typer.Option(
        "--far", help="The share of strangers you accept being named as someone (0.01 = 1 %, the default; 0.001 "
        "= stricter). Calibrated for this gallery against the model's cohort of LFW strangers; a note says "
        "when the gallery cannot promise it.", show_default=False)] = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="Expert override: the gate score under which a face is named (overrides --far).",
        show_default=False)] = None,
    method: Annotated[Optional[IdentifyMethod], typer.Option(
        "--method", help="mean (a person's mean face), nearest (a person's closest face), knn (the k nearest faces "
        "vote) or svm (linear SVC fitted on the gallery, as OpenFace's classifier); each behind the same unknown "
        "gate. Default: the one the model's operating points were calibrated with (mean for dlib-resnet.v1).",
        show_default=False)] = None,
    k: Annotated[int, typer.Option("--k", min=1, metavar="N", help="With --method knn: how many nearest faces "
                                   "vote.")] = 3,
    top: TopOption = 3,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="A catalogue name or checkpoint; must be the gallery's own model (the default).")] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.auto,
    detector: DetectorOption = DefaultDetector,
    upsample: UpsampleOption = Upsample.auto,
    min_face: MinFaceOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = Executor.local,
    address: AddressOption = None,
    index: Annotated[IndexUse, typer.Option(
        "--index", help="auto: search the gallery's index (kept beside it, rebuilt when stale) once exact "
        "matching would scan 10,000 vectors per query; always; never (exact).")] = IndexUse.auto,
    as_csv: Annotated[bool, typer.Option(
        "--csv", help="Print CSV on stdout instead of a table: one row per face (photo, face, left, top, right, "
        "bottom, name, distance, far, candidates, problem) and one per photo without a face (photo and problem). "
        "candidates is a JSON list of {\"name\", \"distance\"}, best first. A text cell starting with =, +, -, @, "
        "a tab or a carriage return gets a leading ' so that spreadsheets show it as text, not a formula.")] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Name every face in the photos from a gallery, or say `unknown` (with the estimated false-alarm rate).

    Photos are named by their path relative to the folder given. Exit 0 with answers, 3 when no photo holds a face, 2 on usage.

    Example: facenet identify people.gallery party/ --far 0.001 --top 3
    """
    refuse_together(**{"--csv": as_csv, "--json": as_json})
    if method is not None and method.value != "knn" and given_options(ctx, "k"):
        from ..errors import UsageError

        raise UsageError(f"--k is the number of voting faces of --method knn, not of --method {method.value}; "
                         "drop --k or use --method knn.")
    from ..recognition.identify import check_found, identify
    from ..store.registry import open_store
    from ._progress import CountingProgress

    options = pipeline_options(model, precision=precision, device=device, detector=detector, upsample=upsample, min_face=min_face)
    with open_store(gallery) as store, open_executor(executor, address, workers) as runner, \
            CountingProgress("Identifying", "photos/s", quiet) as bar:
        result = identify(store, [str(p) for p in photos], method=method.value if method else None, far=far,
                          threshold=threshold, top=top, k=k, pipeline=options, executor=runner,
                          use_index=index.value, progress=bar)
    if as_json:
        print_json(result.to_dict())
    elif as_csv:
        typer.echo(result.csv_text(), nl=False)
    else:
        point = (f"FAR {result.far:g} (threshold {result.threshold:.4f}"
                 + (", this gallery's)" if result.operating_point is not None else ")")
                 if result.far is not None else f"threshold {result.threshold:.4f}")
        table = Table(title=f"{result.gallery}: {result.people} people, {result.method}, gate at {point}")
        for column in ("photo", "face", "box", "name", "distance", "est. FAR", "candidates"):
            numeric = column in ("face", "distance", "est. FAR")
            table.add_column(column, overflow="fold", justify="right" if numeric else "left")
        for face in result.faces:
            a = face.answer
            table.add_row(face.photo, str(face.face), " ".join(map(str, face.box)), a.name, f"{a.distance:.3f}",
                          _far_text(a.far, result.far_range),
                          ", ".join(f"{c.name} {c.distance:.3f}" for c in a.candidates))
        console.print(table)
        data = result.to_dict()
        console.print(f"{data['photos']} photos: {data['faces_found']} faces, {data['named']} named, "
                      f"{data['unknown']} unknown; {data['photos_without_face']} photos without a face.", markup=False)
    if not as_json and not as_csv:
        for photo, reason in result.problems.items():
            err_console.print(f"{photo}: {reason}", markup=False)
    for note in result.notes():  # once per command, whatever the output: the FAR asked is not promised here
        err_console.print(f"Note: {note}", markup=False, highlight=False, soft_wrap=True)
    check_found(result)  # after the output: scripts still get every photo's problem


def _far_text(far: float | None, far_range: tuple[float, float] | None) -> str:
    """The estimated FAR, with the calibrated range's ends shown as bounds."""
    if far is None:
        return ""
    if far_range and far >= far_range[1] * (1 - 1e-9):
        return f">= {far_range[1]:g}"
    if far_range and far <= far_range[0] * (1 + 1e-9):
        return f"<= {far_range[0]:g}"
    return f"{far:.2g}"
