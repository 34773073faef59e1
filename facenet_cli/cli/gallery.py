"""`facenet gallery add|list|remove|move|export`: the people `facenet identify` knows, in one SQLite file."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.table import Table

from ..choices import DEFAULT_MODEL, Detector, FacePolicy, Fallback, Upsample
from ._app import (INTERRUPTED, BatchSizeOption, DetectorOption, DeviceOption, FacenetCommand, FacenetGroup,
                   FallbackOption, JsonOption, QuietOption, app, console, err_console, fail, guarded, print_json)

gallery_app = typer.Typer(
    name="gallery", cls=FacenetGroup, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="The people `facenet identify` knows: their faces' embeddings, source photos and the model, in one "
    "SQLite file (add, list, remove, move, export).")
app.add_typer(gallery_app, name="gallery")

GalleryArg = Annotated[Path, typer.Argument(help="The gallery file (SQLite), e.g. people.gallery.", dir_okay=False)]
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
    batch_size: BatchSizeOption = 32,
    detector: DetectorOption = Detector.hog,
    upsample: Annotated[Upsample, typer.Option("--upsample", help="Detector upsampling 0-4, or auto.")] = Upsample.auto,
    faces: Annotated[FacePolicy, typer.Option(
        "--faces", help="A photo with several faces: skip-multi (default: enrol none of them and say so), largest, "
        "center or center-only.")] = FacePolicy.skip_multi,
    fallback: FallbackOption = Fallback.none,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Enrol people: one face per photo, never the same image twice, nothing embedded again.

    Example: facenet gallery add people.gallery known/   (known/<name>/<photo>; also: --name Ada a.jpg b.jpg)
    """
    from ..store.gallery import add_to_gallery
    from ._progress import CountingProgress

    with CountingProgress("Adding", "/s", quiet) as bar:
        report = add_to_gallery(gallery, [str(p) for p in inputs], name=name, model=model, flip=flip,
                                device=device.value, detector=detector.value, upsample=upsample.value,
                                faces=faces.value, fallback=fallback.value, batch_size=batch_size,
                                on_start=bar.on_start, on_advance=bar.on_advance)
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
        console.print(f"{len(report.outcomes)} inputs: {summary}; gallery {report.gallery} ({report.seconds:.1f} s).")
    if counts["added"] == 0 and counts["already-in"] == 0 and counts["duplicate"] == 0:  # all in already is fine
        fail(f"No face could be added from the {len(report.outcomes)} inputs; see each one's outcome above.")


@gallery_command
def gallery_list_command(
    gallery: GalleryArg,
    faces: Annotated[bool, typer.Option("--faces", help="Also list every face: its id, person and source.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The people in a gallery and how many faces each has.

    Example: facenet gallery list people.gallery --faces
    """
    from ..store.gallery import gallery_summary

    summary = gallery_summary(gallery, with_faces=faces)
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
    if faces:
        face_table = Table(title="faces")
        for column in ("id", "person", "source", "box"):
            face_table.add_column(column, overflow="fold", justify="right" if column == "id" else "left")
        for face in summary["faces"]:
            face_table.add_row(str(face["id"]), face["person"], face["source"],
                               " ".join(map(str, face["box"])) if face["box"] else "")
        console.print(face_table)


@gallery_command
def gallery_remove_command(
    gallery: GalleryArg,
    target: Annotated[str, typer.Argument(
        help="A person's name (all their faces), or a face id from `gallery list --faces`.")],
    as_json: JsonOption = False,
) -> None:
    """Remove a person with all their faces, or one face by its id.

    Example: facenet gallery remove people.gallery "Ada Lovelace"
    """
    from ..store.gallery import remove_from_gallery

    result = remove_from_gallery(gallery, target)
    if as_json:
        print_json(result)
    elif "face_id" in result:
        console.print(f"Removed face {result['face_id']} of {result['person']}.", markup=False)
    else:
        console.print(f"Removed {result['person']} ({result['removed_faces']} faces).", markup=False)


@gallery_command
def gallery_move_command(
    gallery: GalleryArg,
    # Text, read by gallery.parse_face_id: click's int would take "+3", "1_000" and other scripts' digits.
    face_id: Annotated[str, typer.Argument(help="The face's id (see `gallery list --faces`).", show_default=False)],
    new_name: Annotated[str, typer.Argument(help="The person it belongs to (made when new).")],
    as_json: JsonOption = False,
) -> None:
    """Give a face to another person, e.g. to fix a wrong enrolment.

    Example: facenet gallery move people.gallery 17 "Grace Hopper"
    """
    from ..store.gallery import move_in_gallery

    result = move_in_gallery(gallery, face_id, new_name)
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
    from ..store.gallery import export_gallery

    count = export_gallery(gallery, out)
    if as_json:
        print_json({"gallery": str(gallery), "out": str(out), "faces": count})
    else:
        console.print(f"{count} faces written to {out} (labels.csv, reps.csv, reps.npy, meta.json).", markup=False)
