"""The gallery's other use cases: `facenet gallery export`, `list`, `remove`, `move` and `copy`. Each takes
a store (store/protocol.py) or a location (opened here, once), so a command opens its store once
and any backend serves them."""
from __future__ import annotations

import os
import unicodedata
from pathlib import PurePath
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, UsageError
from ..pipeline.photos import path_problem
from ..store.names import name_keys, nfkc, parse_face_id
from ..store.registry import is_store, opened_store, shown_location

if TYPE_CHECKING:
    from ..store.protocol import GalleryStore


def export_gallery(gallery: "GalleryStore | str | os.PathLike", out: str | os.PathLike) -> int:
    """Write the gallery as OpenFace's representation folder (labels.csv, reps.csv, reps.npy, meta.json).

    Each face's path is its source when the source's folder is the person's name, else
    `<person>/<source file name>`, so reading the folder back gives every face its person;
    meta.json's `image_sha256` lists each row's image, so adding the export back to the gallery
    enrols nothing twice. A source no CSV can carry (a control character) is written with U+FFFD
    in its place rather than refusing the whole gallery.
    """
    from ..formats.reps import RepsWriter, person_of

    with opened_store(gallery) as store:
        enrolment = store.enrolment()
        by_id = {face.id: face for face in store.faces()}
        location = store.location
    model = enrolment.model
    # Each row's image SHA-256, so adding the export back finds its faces in the gallery already
    # wherever it runs (the sources may be relative to another directory).
    shas = [by_id[int(face_id)].image_sha256 for face_id in enrolment.face_ids]
    meta = {"model": model.record, "flip": model.flip, "gallery": location, "image_sha256": shas}
    with RepsWriter(out, len(enrolment.face_ids), model.dim, meta) as writer:
        for face_id, vector, person_i in zip(enrolment.face_ids, enrolment.embeddings, enrolment.person_index):
            person = enrolment.names[person_i]
            source = _exportable(by_id[int(face_id)].source)
            path = source if person_of(source) == person else f"{person}/{PurePath(source.replace(chr(92), '/')).name}"
            writer.add(path, person, vector)
    return len(enrolment.face_ids)


def _exportable(source: str) -> str:
    """A face's source as a labels.csv path: a control character or an undecodable byte (in a
    gallery enrolled before such names were refused) becomes U+FFFD, not a backslash escape, which
    would read as a folder. The row keeps its face: its person is the folder, its image the
    SHA-256 recorded in meta.json."""
    if not path_problem(source):
        return source
    return "".join("\ufffd" if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in source)


def gallery_summary(gallery: "GalleryStore | str | os.PathLike", with_faces: bool = False) -> dict:
    """`facenet gallery list`: the model, and each person's number of faces (and faces, if asked).
    It reads a gallery whose version or model record is damaged (`model` is then None and
    `problem` says what is wrong): where its faces came from is what rebuilding it needs. A store
    given is best opened with `salvage=True`, as a location is here."""
    with opened_store(gallery, salvage=True) as gallery:
        problem = None
        try:
            model = gallery.model
            gallery.check_integrity()
        except DataError as exc:
            model, problem = None, str(exc)
        people = gallery.people()
        summary = {
            "gallery": gallery.location,
            "model": model.name if model else None,
            "alignment": model.align.get("name") if model else None,
            "flip": model.flip if model else None,
            "people": [{"name": n, "faces": c} for n, c in people],
            "total_people": len(people),
            "total_faces": sum(c for _, c in people),
        }
        if problem:
            summary["problem"] = problem
        elif model is not None:  # identify's gate on this gallery (recognition/calibration.py)
            from .identify import gallery_operating_point

            summary["operating_point"] = gallery_operating_point(gallery)
        if with_faces:
            summary["faces"] = [{"id": f.id, "person": f.person, "source": f.source,
                                 "box": list(f.box) if f.box else None} for f in gallery.faces()]
    return summary


def remove_from_gallery(gallery: "GalleryStore | str | os.PathLike", target: str) -> dict:
    """`facenet gallery remove`: a person by name, or one face by its id (ASCII digits that are no
    one's name; `parse_face_id`)."""
    with opened_store(gallery) as gallery:
        names = {n for n, _ in gallery.people()}
        stored = next((key for key in name_keys(target) if key in names), None)
        face_id = parse_face_id(target)
        if stored is None and face_id is not None:
            person = gallery.remove_face(face_id)
            gallery.keep_index_current()
            return {"removed_faces": 1, "person": person, "face_id": face_id}
        count = gallery.remove_person(target)
        gallery.keep_index_current()
        return {"removed_faces": count, "person": stored or nfkc(target)}


def move_in_gallery(gallery: "GalleryStore | str | os.PathLike", face_id: int | str, new_name: str) -> dict:
    """`facenet gallery move`: give a face to another (maybe new) person. `face_id` as typed is
    read by `parse_face_id`."""
    if isinstance(face_id, str):
        parsed = parse_face_id(face_id)
        if parsed is None:
            shown = gallery if is_store(gallery) else shown_location(gallery)
            raise UsageError(f"{face_id!r} is not a face id; give the number (ASCII digits) that `facenet gallery "
                             f"list {shown} --with-faces` shows.")
        face_id = parsed
    with opened_store(gallery) as gallery:
        old, new = gallery.move_face(int(face_id), new_name)
        gallery.keep_index_current()
    return {"face_id": int(face_id), "from": old, "to": new}


# Faces per transaction of `gallery copy`: a killed copy leaves whole batches, which a rerun skips.
COPY_BATCH = 2000


def copy_gallery(source: "GalleryStore | str | os.PathLike", destination: "GalleryStore | str | os.PathLike",
                 batch: int = COPY_BATCH) -> dict:
    """`facenet gallery copy SRC DST`: every face of one store into another (e.g. a SQLite file into
    PostgreSQL), with its person, source, box, image SHA-256, thumbnail and the embedding's very
    bytes, so nothing is embedded again. The destination is made when missing, bound to the
    source's model (or refused when it holds another's); faces it has already (by image) are
    skipped, so a copy that was stopped is finished by running it again."""
    from ..models.catalogue import ModelRecord

    with opened_store(source) as src, opened_store(destination, create=True) as dst:
        _, enrolment = src.snapshot()
        if enrolment is None:
            src.enrolment()  # the one-sentence "holds no faces yet"
        model = enrolment.model
        dst.bind(ModelRecord.from_dict(model.record), model.ref, model.flip)
        dst.check_model(model.name, model.align, model.dim, model.fingerprint, model.flip)
        order = np.argsort(enrolment.face_ids, kind="stable")  # face id order: the copy's ids keep it
        faces = src.faces_by_id(enrolment.face_ids.tolist())
        rows = [(enrolment.names[enrolment.person_index[i]], enrolment.embeddings[i], faces[fid].source,
                 faces[fid].image_sha256, faces[fid].box)
                for i, fid in ((i, int(enrolment.face_ids[i])) for i in order) if fid in faces]
        added = 0
        for start in range(0, len(rows), max(1, batch)):
            added += sum(face_id is not None for face_id in dst.add_faces(rows[start:start + batch]))
        copied = {row[3] for row in rows}
        thumbnails = 0
        for sha in sorted(src.thumbnails() & copied):
            jpeg = src.thumbnail(sha)
            if jpeg is not None:
                dst.save_thumbnail(sha, jpeg)
                thumbnails += 1
        dst.keep_index_current()
        return {"from": src.location, "to": dst.location, "model": model.name, "faces": len(rows),
                "added": added, "already_in": len(rows) - added, "people": len(enrolment.names),
                "thumbnails": thumbnails}
