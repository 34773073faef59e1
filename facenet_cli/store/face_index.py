"""The gallery's search index, the one home of its contract: an approximate nearest-neighbour
index (faiss HNSW) over a gallery's faces, kept in one file beside the gallery
(`people.gallery` -> `people.gallery.index`).

File layout: the line `facenet-face-index`, one line of JSON (the header), then the library's
own serialised index (the payload). The header records what the index was built from: the
gallery's id, generation (bumped by every write transaction of the gallery) and revision (a
random token every write transaction replaces, so a copy of the gallery changed apart from this
one, which may reach the same id, generation and counts, never matches), its number of faces and
largest face id, the model's fingerprint and embedding size, and the payload's length and CRC-32.
An index whose header does not match the gallery as it is now (stale), whose payload does not
check out (damaged), or that was built for another model is never trusted: it is rebuilt from
the gallery, which stays the only source of truth, and written atomically (atomic.py).

Keys are the gallery's face ids; the index answers face ids and squared L2 distances, and the
gallery answers who and where from. Only the SQLite store (store/sqlite.py) uses this file: callers
ask their store for its nearest-neighbour index (`GalleryStore.neighbour_index`). Queries use one thread (`identify` asks one face at a time).
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import DataError
from .types import IndexUse

if TYPE_CHECKING:
    from .types import Enrolment, GalleryChanges, GalleryState

MAGIC = b"facenet-face-index\n"
FORMAT = "facenet-face-index"
VERSION = 1
LIBRARY = "faiss"
# Chosen by benchmarks/search_million.py: --compare (the library), then the million-face runs (M=16 vs
# M=32, ef_search 64-1024): M=32, ef_search 512 gave the best recall with p99 3 ms (docs/GALLERIES.md).
PARAMS = {"M": 32, "ef_construction": 128, "ef_search": 512}
# More removed faces than this share of the index: rebuilt rather than patched (searches skip them).
MAX_TOMBSTONE_SHARE = 0.1
# Below this many rows to scan, exact search is as fast as the index (benchmarks/search_million.py
# --exact-sizes), so `identify` and `search` scan; from it on they use (and build) the index.
INDEX_MIN_FACES = 10_000


def index_path(gallery_path: str | os.PathLike) -> Path:
    path = Path(gallery_path)
    return path.with_name(path.name + ".index")


class FaceIndex:
    """An HNSW index (faiss IndexHNSWFlat, squared L2) of unit face embeddings keyed by face id.

    faiss numbers vectors 0..n-1 in the order they were added; `labels` maps each number to its
    face id (-1 once removed: HNSW cannot unlink a vector, so a removed face is a tombstone that
    searches skip; `apply_changes` rebuilds once there are many). A face id the gallery reuses
    after a removal gets a new number, so a tombstone never hides a live face.
    """

    library = LIBRARY

    def __init__(self, index, labels: np.ndarray, params: dict, header: dict | None = None):
        self._index = index
        self.labels = np.asarray(labels, dtype=np.int64)
        self.params = dict(params)
        self.header = dict(header or {})
        self._live = {int(face_id) for face_id in self.labels[self.labels >= 0]}
        self._skip = None  # the faiss selector that skips tombstones (and what it must keep alive)

    # -- building and (de)serialising

    @classmethod
    def build(cls, embeddings: np.ndarray, keys: np.ndarray, threads: int = 0,
              params: dict | None = None) -> "FaceIndex":
        import faiss

        params = dict(params or PARAMS)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.IndexHNSWFlat(embeddings.shape[1], params["M"])
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
        if len(embeddings):
            faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
            try:
                index.add(embeddings)
            finally:
                faiss.omp_set_num_threads(1)  # queries: one thread (one face at a time)
        return cls(index, np.asarray(keys, dtype=np.int64).copy(), params)

    def to_bytes(self) -> bytes:
        import faiss

        return (len(self.labels).to_bytes(8, "little") + self.labels.astype("<i8").tobytes()
                + faiss.serialize_index(self._index).tobytes())

    @classmethod
    def from_bytes(cls, payload: bytes, params: dict | None = None) -> "FaceIndex":
        import faiss

        count = int.from_bytes(payload[:8], "little")
        end = 8 + 8 * count
        if len(payload) < end:
            raise ValueError("it is shorter than its own count of faces")
        labels = np.frombuffer(payload, dtype="<i8", count=count, offset=8).astype(np.int64)
        index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8, offset=end))
        if index.ntotal != count:
            raise ValueError("its graph and its face ids disagree")
        faiss.omp_set_num_threads(1)
        return cls(index, labels, params or PARAMS)

    # -- using

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: int) -> bool:
        return int(key) in self._live

    @property
    def tombstones(self) -> int:
        return int((self.labels < 0).sum())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) face ids (-1 where the index has fewer faces) and squared L2 distances (inf there)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        if not self._live or not len(queries):
            return ids, distances
        import faiss

        depth = min(k, len(self.labels))
        options = faiss.SearchParametersHNSW()
        options.efSearch = max(self.params["ef_search"], depth)
        if self.tombstones:  # the graph still routes through removed faces but never answers them
            if self._skip is None:
                dead = np.flatnonzero(self.labels < 0).astype(np.int64)
                self._skip = (faiss.IDSelectorBatch(len(dead), faiss.swig_ptr(dead)), dead)
                self._skip = (faiss.IDSelectorNot(self._skip[0]), *self._skip)
            options.sel = self._skip[0]
        found_d, found = self._index.search(queries, depth, params=options)
        for row in range(len(queries)):
            numbers = found[row]
            keep = numbers >= 0
            face_ids = np.where(keep, self.labels[np.where(keep, numbers, 0)], -1)
            alive = face_ids >= 0
            take = min(k, int(alive.sum()))
            ids[row, :take] = face_ids[alive][:take]
            distances[row, :take] = found_d[row][alive][:take]
        return ids, distances

    def add(self, embeddings: np.ndarray, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        if len(keys):
            self._index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
            self.labels = np.concatenate([self.labels, keys])
            self._live.update(int(k) for k in keys)

    def remove(self, keys) -> None:
        gone = {int(k) for k in keys} & self._live
        if gone:
            self.labels[np.isin(self.labels, list(gone))] = -1
            self._live -= gone
            self._skip = None


# ------------------------------------------------------------------ the file

def _header_for(state: "GalleryState", params: dict, payload: bytes) -> dict:
    from importlib.metadata import version

    return {"format": FORMAT, "version": VERSION, "library": LIBRARY, "library_version": version("faiss-cpu"),
            "params": params, "metric": "l2sq", "gallery_id": state.gallery_id, "generation": state.generation,
            "revision": state.revision,
            "faces": state.faces, "max_face_id": state.max_face_id, "model_fingerprint": state.fingerprint,
            "dim": state.dim, "payload_bytes": len(payload), "payload_crc32": zlib.crc32(payload)}


def write_index(path: Path, index: FaceIndex, state: "GalleryState") -> None:
    from ..atomic import atomic_open, remove_stale_temps

    remove_stale_temps(path.parent, recursive=False)  # e.g. the half-written index of a killed run
    payload = index.to_bytes()
    header = _header_for(state, index.params, payload)
    with atomic_open(path, "wb") as fh:
        fh.write(MAGIC)
        fh.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        fh.write(payload)
    index.header = header


def read_index(path: Path) -> FaceIndex:
    """The index in `path`; ValueError with the reason when it is not a whole facenet index."""
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise ValueError("it is not a facenet face index")
        line = fh.readline(1 << 16)
        try:
            header = json.loads(line)
        except ValueError:
            raise ValueError("its header is damaged") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("its header is damaged")
        if header.get("version") != VERSION or header.get("library") != LIBRARY:
            raise ValueError(f"it is version {header.get('version')} of the format ({header.get('library')})")
        payload = fh.read()
    if len(payload) != header.get("payload_bytes") or zlib.crc32(payload) != header.get("payload_crc32"):
        raise ValueError("it is damaged (its checksum does not match; e.g. a truncated copy)")
    try:
        index = FaceIndex.from_bytes(payload, header.get("params") or PARAMS)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"the library cannot read it ({str(exc).splitlines()[0][:120]})") from None
    index.header = header
    return index


def stale_reason(header: dict, state: "GalleryState") -> str | None:
    """Why an index with `header` does not describe the gallery in `state`, or None."""
    if header.get("model_fingerprint") != state.fingerprint or header.get("dim") != state.dim:
        return "it was built for another model's embeddings"
    if header.get("gallery_id") != state.gallery_id:
        return "it was built for another gallery"
    if header.get("generation") != state.generation or header.get("faces") != state.faces or \
            header.get("max_face_id") != state.max_face_id:
        return "the gallery changed since it was built"
    if header.get("revision") != state.revision or not isinstance(state.revision, str):
        return "it was built for another copy of the gallery, changed apart from this one"
    return None


def current_index(path: Path, state: "GalleryState", enrolment: "Enrolment", save: bool = True) -> IndexUse:
    """The index of the gallery as it is in `state` (whose faces are `enrolment`): the index file
    `path` when it is current and whole, else one built from the faces (and saved over the file,
    atomically, when `save`)."""
    reason = ""
    if path.exists():
        try:
            index = read_index(path)
        except (ValueError, OSError) as exc:
            reason = f"{path.name} was not used: {exc}"
        else:
            why = stale_reason(index.header, state)
            if why is None and len(index) == state.faces:
                return IndexUse(index, "used")
            reason = f"{path.name} was not used: {why or 'it holds another number of faces'}"
    index = FaceIndex.build(enrolment.embeddings, enrolment.face_ids)
    if save:
        try:
            write_index(path, index, state)
        except Exception as exc:  # a read-only folder: the index still answers, from memory
            reason += f"; the rebuilt index could not be saved ({exc})"
    return IndexUse(index, "rebuilt" if reason else "built", reason.lstrip("; "))


def apply_changes(path: Path, changes: "GalleryChanges", state: "GalleryState",
                  snapshot: "Callable[[], tuple[GalleryState, Enrolment | None]]") -> str:
    """Keep an existing index file `path` current after this process's writes to its gallery
    (`changes`; the gallery is in `state` now, and `snapshot` reads all its faces): patch it when
    it describes the gallery as it was just before them, else rebuild it. Returns what was done
    ("none", "updated", "rebuilt", "removed"). No index file: nothing to do (readers build one)."""
    if not path.exists() or changes.start is None:
        return "none"
    index = None
    if changes.contiguous and state.generation == changes.end:
        try:
            index = read_index(path)
        except (ValueError, OSError):
            index = None
        if index is not None and stale_reason(index.header, changes.start) is None:
            index.remove(sorted(changes.removed | set(changes.added)))
            alive = list(changes.added)  # a face removed after being added is not in `added` any more
            if alive:
                index.add(np.stack([changes.added[k] for k in alive]), np.array(alive, dtype=np.int64))
            if len(index) == state.faces and index.tombstones <= MAX_TOMBSTONE_SHARE * max(len(index.labels), 1):
                write_index(path, index, state)
                return "updated"
    state, enrolment = snapshot()
    if enrolment is None:  # the gallery is empty now: nothing to index
        remove_index(path)
        return "removed"
    write_index(path, FaceIndex.build(enrolment.embeddings, enrolment.face_ids), state)
    return "rebuilt"


def remove_index(path: Path) -> None:
    """Remove the index file `path` (if there is one)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DataError(f"Cannot remove {path} ({exc.strerror}).") from None
