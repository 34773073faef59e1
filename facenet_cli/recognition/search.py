"""`facenet search`: the gallery faces most similar to each face of a photo.

Two ways to the same answers:
- a store read whole (the SQLite file; any store without store.protocol.SearchesInPlace): every
  face is read, then searched exactly or with the store's index (faiss HNSW beside the file);
- a store that searches in place (PostgreSQL: HNSW in the database): the database shortlists each
  query's nearest faces and only the faces of the person named first are read, to score them
  exactly (refine_by_person), so a million-face gallery is never read to answer one photo. An
  exact scan (`--index never`, or a gallery below face_index.INDEX_MIN_FACES faces with `auto`)
  also runs in the database; its candidates are ranked here by the same float64 distances as a
  scan of the whole gallery.
Both give the same faces, in the same order, at the same distances, whenever the index's
shortlist holds the true neighbours.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import NothingFound, UsageError
from ..store.protocol import searches_in_place
from ..store.registry import shown_location
from .identify import _index_for, _load_gallery, gallery_pipeline, wants_index

if TYPE_CHECKING:
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions
    from ..store.types import Enrolment

# The in-database exact scan ranks by pgvector's float32 distance; this many more candidates than
# asked are ranked here in float64, so a near-tie at the k-th place falls as a scan here would.
EXACT_MARGIN = 16


@dataclass
class FaceMatch:
    face_id: int
    person: str
    source: str
    distance: float  # squared L2

    def to_dict(self) -> dict:
        return {"face_id": self.face_id, "person": self.person, "source": self.source,
                "distance": round(self.distance, 6)}


@dataclass
class SearchedFace:
    face: int
    box: tuple[int, int, int, int]
    matches: list[FaceMatch]

    def to_dict(self) -> dict:
        return {"face": self.face, "box": list(self.box), "matches": [m.to_dict() for m in self.matches]}


@dataclass
class SearchResult:
    gallery: str
    photo: str
    model: str
    gallery_faces: int
    top: int
    search: str  # "exact", or "index (used|built|rebuilt|database)"
    index_note: str = ""  # why a saved index was not used, when it was rebuilt
    faces: list[SearchedFace] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"gallery": self.gallery, "photo": self.photo, "model": self.model, "gallery_faces": self.gallery_faces,
                "top": self.top, "search": self.search, "index_note": self.index_note,
                "faces_found": len(self.faces), "faces": [f.to_dict() for f in self.faces]}


def nearest_faces(vectors: np.ndarray, enrolment: "Enrolment", top: int, index=None) -> tuple[np.ndarray, np.ndarray]:
    """(Q, K) face ids and squared L2 distances of each vector's `top` nearest gallery faces, by
    the index when given, else exactly; best first (-1 / inf pad when the gallery is smaller)."""
    if index is not None:
        return refine_by_person(vectors, *index.search(vectors, top), enrolment, top)
    from ..nets.embedder import squared_distances

    d = squared_distances(np.atleast_2d(vectors), enrolment.embeddings)
    k = min(top, d.shape[1])
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(part, np.argsort(np.take_along_axis(d, part, 1), axis=1, kind="stable"), 1)
    ids = np.full((len(d), top), -1, dtype=np.int64)
    dist = np.full((len(d), top), np.inf, dtype=np.float32)
    ids[:, :k] = enrolment.face_ids[order]
    dist[:, :k] = np.take_along_axis(d, order, 1)
    return ids, dist


def refine_by_person(vectors: np.ndarray, ids: np.ndarray, distances: np.ndarray, enrolment, top: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """An index's answer made exact within the person it names first: the face the graph search
    found first is nearly always of the right person (0.999 of "new photo" queries on a million
    faces) but not always that person's nearest face, among the many near-identical photos of one
    person. So every face of that person is scored exactly and merged with the index's other
    hits; recall@1 against exact search then follows the person, not the graph's luck.
    `enrolment` needs embeddings (unit rows), person_index and face_ids: the whole gallery, or
    only the faces of the people named first (as a store that searches in place hands them).
    A first face not in it (the gallery changed under the index) keeps the index's answer."""
    ids, distances = ids.copy(), distances.copy()
    rows_of_person, id_order, sorted_ids = _person_lookup(enrolment)
    for row, vector in enumerate(np.atleast_2d(np.asarray(vectors, dtype=np.float32))):
        first = ids[row, 0]
        if first < 0:
            continue
        at = int(np.searchsorted(sorted_ids, first))
        if at >= len(sorted_ids) or sorted_ids[at] != first:
            continue  # the gallery changed under the index: keep the index's answer
        rows = rows_of_person[int(enrolment.person_index[id_order[at]])]
        # Unit rows: squared L2 = 2 - 2 cos, in float32 as the index computes it (one person's
        # faces can be tens of thousands in a big gallery; float64 copies would cost milliseconds).
        exact = np.maximum(2.0 - 2.0 * (enrolment.embeddings[rows] @ vector), 0.0)
        near = np.argpartition(exact, top - 1)[:top] if len(exact) > top else np.arange(len(exact))
        # only the person's `top` nearest can make the list
        rows = near + rows.start if isinstance(rows, slice) else rows[near]
        exact = exact[near]
        person_ids = enrolment.face_ids[rows]
        others = (ids[row] >= 0) & ~np.isin(ids[row], person_ids)
        merged_ids = np.concatenate([person_ids, ids[row][others]])
        merged_d = np.concatenate([exact.astype(np.float32), distances[row][others]])
        best = np.lexsort((merged_ids, merged_d))[:top]
        ids[row, :len(best)] = merged_ids[best]
        distances[row, :len(best)] = merged_d[best]
    return ids, distances


def _person_lookup(enrolment) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each person's rows in the enrolment arrays (a slice where they are contiguous, as a
    gallery's are: its faces come ordered by person, so scoring a person copies nothing), and
    face id -> row by binary search; cached on the enrolment, built once per loaded gallery."""
    cached = getattr(enrolment, "_person_lookup", None)
    if cached is None:
        people = enrolment.person_index
        order = np.argsort(people, kind="stable")
        bounds = np.searchsorted(people[order], np.arange(int(people.max()) + 2))
        if np.all(np.diff(people) >= 0):
            rows = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(bounds) - 1)]
        else:
            rows = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        id_order = np.argsort(enrolment.face_ids, kind="stable")
        cached = (rows, id_order, enrolment.face_ids[id_order])
        enrolment._person_lookup = cached
    return cached


# ------------------------------------------------------------------ in the store itself

def nearest_in_place(store, vectors: np.ndarray, top: int, use_index: bool) -> tuple[np.ndarray, np.ndarray]:
    """What nearest_faces answers, asked of a store that searches in place (SearchesInPlace):
    with the index, its shortlist refined by the faces of the people it names first (read alone);
    without, its exact scan ranked here in float64 as nearest_faces ranks a whole gallery."""
    from ..nets.embedder import squared_distances

    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if use_index:
        ids, distances = store.nearest(vectors, top)
        firsts = ids[:, 0][ids[:, 0] >= 0]
        people = store.people_enrolment(firsts) if len(firsts) else None
        return refine_by_person(vectors, ids, distances, people, top) if people is not None else (ids, distances)
    found = store.nearest_exact(vectors, top + EXACT_MARGIN)
    ids = np.full((len(vectors), top), -1, dtype=np.int64)
    dist = np.full((len(vectors), top), np.inf, dtype=np.float32)
    for row, (face_ids, embeddings) in enumerate(found):
        if not len(face_ids):
            continue
        d = squared_distances(vectors[row][None], embeddings)[0]
        order = np.lexsort((face_ids, d))[:top]
        ids[row, :len(order)] = face_ids[order]
        dist[row, :len(order)] = d[order]
    return ids, dist


@dataclass
class VectorSearch:
    """Each query vector's nearest gallery faces, and how they were found."""

    ids: np.ndarray  # (Q, top) face ids, -1 pads
    distances: np.ndarray  # (Q, top) squared L2, inf pads
    gallery_faces: int
    search: str  # as SearchResult.search
    index_note: str = ""


def _gallery_to_search(gallery_path):
    """(the gallery's model, its number of faces, state, enrolment): a store that searches in place
    is not read (state and enrolment None); DataError for a gallery without faces."""
    from ..store.registry import opened_store

    with opened_store(gallery_path) as gallery:
        if searches_in_place(gallery):
            count = len(gallery)
            if not count:
                gallery.enrolment()  # raises the one-sentence "no faces yet"
            return gallery.model, count, None, None
        state, enrolment = _load_gallery(gallery)
    return enrolment.model, len(enrolment.face_ids), state, enrolment


def _search_read(gallery_path, vectors, top: int, run_index: bool, gallery_faces: int, state,
                 enrolment) -> VectorSearch:
    """search_vectors' second half: the gallery asked (enrolment None) or searched as read."""
    from ..store.registry import opened_store

    if enrolment is None:  # searched in place
        with opened_store(gallery_path) as gallery:
            ids, distances = nearest_in_place(gallery, vectors, top, run_index)
        return VectorSearch(ids, distances, gallery_faces, "index (database)" if run_index else "exact")
    index, search, note = None, "exact", ""
    if run_index:
        got = _index_for(gallery_path, state, enrolment)
        index, search, note = got.index, f"index ({got.status})", got.reason
    ids, distances = nearest_faces(vectors, enrolment, top, index)
    return VectorSearch(ids, distances, gallery_faces, search, note)


def search_vectors(gallery_path, vectors: np.ndarray, *, top: int = 5, use_index: str = "auto") -> VectorSearch:
    """The `top` nearest gallery faces of each embedding (unit rows of the gallery's model), as
    `facenet search` finds them for a photo's faces: `use_index` auto (the index from
    face_index.INDEX_MIN_FACES faces on), always or never. A store that searches in place is asked,
    not read (the module docstring); any other is read whole."""
    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}.")
    _, count, state, enrolment = _gallery_to_search(gallery_path)
    return _search_read(gallery_path, vectors, top, wants_index(use_index, count), count, state, enrolment)


def search_gallery(gallery_path: str | os.PathLike, photo: str | os.PathLike, *, top: int = 5,
                   use_index: str = "auto",
                   pipeline: "FacePipeline | PipelineOptions | None" = None) -> SearchResult:
    """`facenet search GALLERY PHOTO --top K`: for every face in the photo, the K most similar
    faces of the gallery (distance, person, source). `pipeline`: as identify's (the gallery's
    model and flip, every face). `use_index`: auto (the gallery's search index from
    face_index.INDEX_MIN_FACES faces on), always, or never (an exact scan). NothingFound when
    the photo holds no face."""
    from ..store.registry import opened_store
    from ..images import read_rgb

    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}.")
    path = Path(photo)
    if not path.exists():
        raise UsageError(f"{path} does not exist; check the path.")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give one photo to search with (identify takes folders).")
    gm, count, state, enrolment = _gallery_to_search(gallery_path)
    run_index = wants_index(use_index, count)
    pipeline = gallery_pipeline(gallery_path, gm, pipeline)
    found = pipeline.faces(read_rgb(path))
    if not found:
        raise NothingFound(f"No face was found in {path}, so there is nothing to search for; give a photo with a "
                           "face (or a sharper, larger one).")
    vectors = pipeline.embed([f.image for f in found])
    got = _search_read(gallery_path, vectors, top, run_index, count, state, enrolment)
    result = SearchResult(shown_location(gallery_path), str(path), gm.name, count, top, got.search, got.index_note)
    ids = got.ids
    with opened_store(gallery_path) as gallery:
        faces = gallery.faces_by_id(ids[ids >= 0])
    for number, (face, row_ids, row_d) in enumerate(zip(found, ids, got.distances)):
        matches = [FaceMatch(int(i), faces[int(i)].person, faces[int(i)].source, float(d))
                   for i, d in zip(row_ids, row_d) if i >= 0 and int(i) in faces]
        box = (face.box.left, face.box.top, face.box.right, face.box.bottom)
        result.faces.append(SearchedFace(number, box, matches))
    return result
