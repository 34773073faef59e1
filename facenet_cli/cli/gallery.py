"""`facenet gallery add|list|remove|move|export|copy`: the people `facenet identify` knows, in a gallery
store (one SQLite file, or a PostgreSQL database)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.table import Table

from ..choices import DEFAULT_MODEL, DefaultDetector, Executor, Fallback, GalleryFacePolicy, Precision, Upsample
from ..errors import EXIT_NOTHING_FOUND
from ._app import (PrecisionOption, INTERRUPTED, AddressOption, BatchSizeOption, DetectorOption, DeviceOption, ExecutorOption,
                   FacenetCommand, FacenetGroup, FallbackOption, GalleryArg, JsonOption, MinFaceOption, QuietOption,
                   UpsampleOption, WorkersOption, app, console, err_console, fail, guarded, open_executor,
                   pipeline_options, print_json)

gallery_app = typer.Typer(
    name="gallery", cls=FacenetGroup, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="The people `facenet identify` knows: their faces' embeddings, source photos and the model, in one "
    "SQLite file or a PostgreSQL database (add, list, remove, move, export, copy).")
app.add_typer(gallery_app, name="gallery")

GalleryModelOption = Annotated[Optional[str], typer.Option(
    "--model", help="A catalogue name or checkpoint file; default: the gallery's own model (a new gallery: "
    f"{DEFAULT_MODEL}).")]
GalleryFlipOption = Annotated[Optional[bool], typer.Option(
    "--flip/--no-flip", help="Average each face's embedding with its mirror image's; default: the gallery's "
    "setting (a new gallery: --flip, as the identification operating points were calibrated).", show_default=False)]


def gallery_command(fn: Callable) -> Callable:
    """Register `facenet gallery NAME` with the same error handling as every other command."""
    name = fn.__name__.replace("_command", "").replace("gallery_", "")
    return gallery_app.command(name, cls=FacenetCommand)(guarded(fn, INTERRUPTED[f"gallery {name}"]))


@gallery_command
def gallery_add_command(
    gallery: GalleryArg,
    inputs: Annotated[list[Path], typer.Argument(
        help="KNOWN/ (one subfolder of photos per person), photos with --name, or a `facenet represent` output.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Whose photos these are (photos as INPUTS).")] = None,
    model: GalleryModelOption = None,
    flip: GalleryFlipOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.auto,
    batch_size: BatchSizeOption = 32,
    detector: DetectorOption = DefaultDetector,
    upsample: UpsampleOption = Upsample.auto,
    min_face: MinFaceOption = None,
    faces: Annotated[GalleryFacePolicy, typer.Option(
        "--faces", help="A photo with several faces: skip-multi (default: enrol none of them and say so), largest, "
        "center or center-only.")] = GalleryFacePolicy.skip_multi,
    fallback: FallbackOption = Fallback.none,
    workers: WorkersOption = None,
    executor: ExecutorOption = Executor.local,
    address: AddressOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Enrol people: one face per photo, never the same image twice, nothing embedded again.

    Example: facenet gallery add people.gallery known/   (known/<name>/<photo>; also: --name Ada a.jpg b.jpg)
    """
    from ..recognition.enrol import add_to_gallery
    from ..store.registry import open_store
    from ._progress import CountingProgress

    with open_store(gallery, create=True) as store, open_executor(executor, address, workers) as runner, \
            CountingProgress("Adding", "/s", quiet) as bar:
        options = pipeline_options(model, precision=precision, flip=flip, device=device, detector=detector, upsample=upsample,
                                   faces=faces, fallback=fallback, batch_size=batch_size, min_face=min_face)
        report = add_to_gallery(store, [str(p) for p in inputs], name=name, pipeline=options, progress=bar,
                                executor=runner)
    counts = report.counts()
    if as_json:
        print_json(report.to_dict())
    else:
        problems = [o for o in report.outcomes if o.status not in ("added",)]
        if problems:
            table = Table(title="Not added")
            for column in ("input", "person", "outcome", "detail"):
                table.add_column(column, overflow="fold")
            for outcome in problems:
                table.add_row(outcome.input, outcome.person, outcome.status, outcome.detail)
            console.print(table)
        summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
        embedded = f", embedded in {report.precision}" if report.precision else ""
        console.print(f"{len(report.outcomes)} inputs: {summary}; gallery {report.gallery} ({report.seconds:.1f} s"
                      f"{embedded}).")
    if counts["added"] == 0 and counts["already-in"] == 0 and counts["duplicate"] == 0:  # all in already is fine
        fail(f"No face could be added from the {len(report.outcomes)} inputs; see each one's outcome above.",
             EXIT_NOTHING_FOUND)


@gallery_command
def gallery_list_command(
    gallery: GalleryArg,
    faces: Annotated[bool, typer.Option("--with-faces", help="Also list every face: its id, person and source.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The people in a gallery and how many faces each has.

    Example: facenet gallery list people.gallery --with-faces
    """
    from ..recognition.gallery_admin import gallery_summary
    from ..store.registry import open_store

    with open_store(gallery, salvage=True) as store:  # a damaged gallery is listed, to rebuild it
        summary = gallery_summary(store, with_faces=faces)
    if summary.get("problem"):  # a damaged gallery is listed (to rebuild it from its sources), and said so
        err_console.print(f"Warning: {summary['problem']}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)
        return
    title = (f"{summary['gallery']}: {summary['total_people']} people, {summary['total_faces']} faces"
             + (f" ({summary['model']}{', flip' if summary['flip'] else ''})" if summary["model"] else ""))
    table = Table(title=title)
    table.add_column("person", overflow="fold")
    table.add_column("faces", justify="right")
    for person in summary["people"]:
        table.add_row(person["name"], str(person["faces"]))
    console.print(table)
    _print_operating_point(summary.get("operating_point"))
    if faces:
        face_table = Table(title="faces")
        for column in ("id", "person", "source", "box"):
            face_table.add_column(column, overflow="fold", justify="right" if column == "id" else "left")
        for face in summary["faces"]:
            face_table.add_row(str(face["id"]), face["person"], face["source"],
                               " ".join(map(str, face["box"])) if face["box"] else "")
        console.print(face_table)


def _print_operating_point(point: dict | None) -> None:
    """identify's gate on this gallery at the default FAR: its threshold, the stranger scores it
    rests on, and who draws strangers in."""
    if not point:
        return
    if point.get("problem"):
        err_console.print(f"Warning: {point['problem']}", markup=False, highlight=False, soft_wrap=True)
        return
    if point.get("cohort_faces"):
        console.print(f"identify's gate at FAR {point['far']:g}: threshold {point['threshold']:.4f}, set for this "
                      f"gallery from {point['cohort_faces']:,} stranger faces ({point['stranger_scores_in_tail']} "
                      "of them in the tail it is read from).", markup=False, highlight=False)
    else:
        far = f"FAR {point['far']:g}" if point.get("far") is not None else "its pair threshold"
        console.print(f"identify's gate at {far}: threshold {point['threshold']:.4f} ({point['source']}).",
                      markup=False, highlight=False)
    for w in point.get("spread_warnings", []):
        console.print(f"Warning: {w['person']} ({w['faces']} faces, spread {w['spread']:.3f}) would be named for "
                      f"{w['strangers_named']} of the {w['of']} strangers named at this point: their photos vary so "
                      "much that strangers come close.", markup=False, highlight=False, soft_wrap=True)


@gallery_command
def gallery_remove_command(
    gallery: GalleryArg,
    target: Annotated[str, typer.Argument(
        help="A person's name (all their faces), or a face id from `gallery list --with-faces`.")],
    as_json: JsonOption = False,
) -> None:
    """Remove a person with all their faces, or one face by its id.

    Example: facenet gallery remove people.gallery "Ada Lovelace"
    """
    from ..recognition.gallery_admin import remove_from_gallery
    from ..store.registry import open_store

    with open_store(gallery) as store:
        result = remove_from_gallery(store, target)
    if as_json:
        print_json(result)
    elif "face_id" in result:
        console.print(f"Removed face {result['face_id']} of {result['person']}.", markup=False)
    else:
        console.print(f"Removed {result['person']} ({result['removed_faces']} faces).", markup=False)


@gallery_command
def gallery_move_command(
    gallery: GalleryArg,
    # Text, read by store/names.py parse_face_id: click's int would take "+3", "1_000" and other scripts' digits.
    face_id: Annotated[str, typer.Argument(help="The face's id (see `gallery list --with-faces`).", show_default=False)],
    new_name: Annotated[str, typer.Argument(help="The person it belongs to (made when new).")],
    as_json: JsonOption = False,
) -> None:
    """Give a face to another person, e.g. to fix a wrong enrolment.

    Example: facenet gallery move people.gallery 17 "Grace Hopper"
    """
    from ..recognition.gallery_admin import move_in_gallery
    from ..store.registry import open_store

    with open_store(gallery) as store:
        result = move_in_gallery(store, face_id, new_name)
    if as_json:
        print_json(result)
    else:
        console.print(f"Face {result['face_id']} moved from {result['from']} to {result['to']}.", markup=False)


@gallery_command
def gallery_export_command(
    gallery: GalleryArg,
    out: Annotated[Path, typer.Argument(
        help="Output folder: labels.csv, reps.csv, reps.npy, meta.json.", file_okay=False)],
    as_json: JsonOption = False,
) -> None:
    """Write the gallery in OpenFace's layout (labels.csv + reps.csv), as `facenet represent` does.

    Example: facenet gallery export people.gallery reps/
    """
    from ..recognition.gallery_admin import export_gallery
    from ..store.registry import open_store, shown_location

    with open_store(gallery) as store:
        count = export_gallery(store, out)
    if as_json:
        print_json({"gallery": shown_location(gallery), "out": str(out), "faces": count})
    else:
        console.print(f"{count} faces written to {out} (labels.csv, reps.csv, reps.npy, meta.json).", markup=False)


@gallery_command
def gallery_copy_command(
    source: Annotated[str, typer.Argument(help="The gallery to copy from (a file or a URL).", metavar="SRC",
                                          show_default=False)],
    destination: Annotated[str, typer.Argument(
        help="The gallery to copy into (made when missing), e.g. postgresql://user@host/db?gallery=people.",
        metavar="DST", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Copy every face between two galleries of any stores (SQLite <-> PostgreSQL), embeddings byte for byte.

    Faces the destination holds already (same image) are skipped, so running it again finishes a stopped copy.

    Example: facenet gallery copy people.gallery "postgresql://facenet@db/faces?gallery=people"
    """
    from ..recognition.gallery_admin import copy_gallery
    from ..store.registry import open_store

    with open_store(source) as src, open_store(destination, create=True) as dst:
        result = copy_gallery(src, dst)
    if as_json:
        print_json(result)
    else:
        console.print(f"{result['faces']} faces of {result['people']} people copied from {result['from']} to "
                      f"{result['to']}: {result['added']} added, {result['already_in']} in already "
                      f"({result['thumbnails']} thumbnails).", markup=False)
