"""`facenet search GALLERY PHOTO --top K`: the most similar faces in a gallery."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..choices import DefaultDetector, IndexUse, Precision, Upsample
from ._app import (PrecisionOption, MinFaceOption, DetectorOption, DeviceOption, GalleryArg, JsonOption, TopOption, UpsampleOption, command, console,
                   err_console, pipeline_options, print_json)


@command
def search_command(
    gallery: GalleryArg,
    photo: Annotated[Path, typer.Argument(help="One photo; every face in it is searched for.")],
    top: TopOption = 5,
    index: Annotated[IndexUse, typer.Option(
        "--index", help="auto: search the gallery's index (kept beside it as GALLERY.index, rebuilt when stale) "
        "from 10,000 faces on; always; never (an exact scan).")] = IndexUse.auto,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="A catalogue name or checkpoint; must be the gallery's own model (the default).")] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.auto,
    detector: DetectorOption = DefaultDetector,
    upsample: UpsampleOption = Upsample.auto,
    min_face: MinFaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the gallery faces most similar to each face in a photo: distance, person, source.

    Exit 0 with matches, 3 when the photo holds no face, 2 on usage.

    Example: facenet search people.gallery someone.jpg --top 10
    """
    from ..recognition.search import search_gallery
    from ..store.registry import open_store

    with open_store(gallery) as store:  # opened once, for the faces and the index alike
        result = search_gallery(store, photo, top=top, use_index=index.value,
                                pipeline=pipeline_options(model, precision=precision, device=device, detector=detector, upsample=upsample,
                                                          min_face=min_face))
    if as_json:
        print_json(result.to_dict())
        return
    for face in result.faces:
        table = Table(title=f"{result.photo}, face {face.face} (box {' '.join(map(str, face.box))}): "
                            f"{len(face.matches)} most similar of {result.gallery_faces:,} faces, {result.search}")
        for column in ("rank", "distance", "person", "face id", "source"):
            table.add_column(column, overflow="fold", justify="right" if column in ("rank", "distance", "face id")
                             else "left")
        for rank, match in enumerate(face.matches, 1):
            table.add_row(str(rank), f"{match.distance:.4f}", match.person, str(match.face_id), match.source)
        console.print(table)
    if result.index_note:
        err_console.print(f"Note: {result.index_note}; it was rebuilt from the gallery.", markup=False)
