"""`GalleryStore`: what every gallery backend offers, in one place.

A gallery is people, their faces (an embedding, the photo it came from, its image SHA-256 and
box) and the model the embeddings were made with. The use cases (recognition/enrol.py,
recognition/gallery_admin.py, identify, search) and the server (serve/engine.py) use a gallery
only through these methods, so a second backend is one new module: a class with them and one
`register_store` call (store/registry.py). The SQLite file (store/sqlite.py, `Gallery`) is the
first, PostgreSQL with pgvector (store/postgres.py, `postgresql://` URLs) the second;
tests/test_gallery_protocol.py defines a dict-backed one in a few dozen lines.

Contract, whatever the backend:
- names are stored NFKC-normalised and checked by store/names.py (`normalise_name`); a person
  exists while they have faces;
- an image SHA-256 is in the gallery at most once (`add_faces` answers None for one already in);
- `add_faces` is one transaction: all its faces land or none; `bind` comes first (a gallery
  holds one model's embeddings; `check_model` refuses another's);
- errors are one-sentence FacenetErrors (UsageError for a missing person or face);
- `generation()` changes with every committed change, by this process or another, so a
  long-running reader (the server) knows when to read again without polling file times.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only
    import numpy as np

    from ..models.catalogue import ModelRecord
    from .types import Enrolment, Face, GalleryModel, GalleryState, IndexUse

# A face to enrol: (person, embedding, source, image SHA-256, box (left, top, right, bottom) or None).
FaceRow = tuple


@runtime_checkable
class GalleryStore(Protocol):
    """One gallery, opened by `open_store(location)`; a context manager (or call `close()`)."""

    read_only: bool  # writes are refused with one sentence (e.g. a file the user cannot write)

    @property
    def location(self) -> str:
        """Where the gallery is, as the user gave it (a path, a URL): what messages name."""

    # -- the model

    @property
    def model(self) -> "GalleryModel | None":
        """The model of the gallery's embeddings; None before the first face. DataError when its
        record is damaged."""

    def bind(self, record: "ModelRecord", ref: str, flip: bool) -> "GalleryModel":
        """Make `record` (embedded with `flip`; `ref` loads it again) the gallery's model, or check it is."""

    def check_model(self, name: str, align: dict, dim: int, fingerprint: str | None, flip: bool | None) -> None:
        """SpecMismatch when faces of this model, alignment or flip setting cannot join the gallery."""

    def check_integrity(self) -> None:
        """DataError when the gallery's own records (version, ...) are damaged; a store opened with
        `salvage=True` lists such a gallery and says so through this."""

    # -- reading

    def people(self) -> list[tuple[str, int]]:
        """(name, number of faces) per person, sorted by name."""

    def faces(self, person: str | None = None) -> "list[Face]":
        """Every face (of one person when given), by id."""

    def faces_by_id(self, face_ids: Iterable[int]) -> "dict[int, Face]":
        """The faces with these ids; ids not in the gallery are left out."""

    def __len__(self) -> int:
        """The number of faces."""

    def has_image(self, image_sha256: str) -> bool:
        """Whether a face of this image is in the gallery."""

    def enrolment(self) -> "Enrolment":
        """Every face as arrays, people sorted by name; DataError for a gallery without faces."""

    def state(self) -> "GalleryState":
        """What a derived index records of the gallery (id, generation, counts, model, revision)."""

    def snapshot(self) -> "tuple[GalleryState, Enrolment | None]":
        """The state and every face, read together (so they agree); None for no faces."""

    def generation(self) -> object:
        """A token equal between two calls exactly when the gallery did not change in between,
        whoever changed it (cheap: the server asks it twice a second)."""

    # -- nearest neighbours

    def neighbour_index(self, state: "GalleryState", enrolment: "Enrolment") -> "IndexUse":
        """A nearest-neighbour index over the faces of this snapshot (`index.search(queries, k)` ->
        face ids, squared L2 distances), how it was got (`status`) and why a saved one was not used."""

    def nearest(self, vectors: "np.ndarray", k: int) -> "tuple[np.ndarray, np.ndarray]":
        """(Q, k) face ids (-1 pads) and squared L2 distances (inf pads) of each vector's k nearest faces."""

    # -- writing

    def add_faces(self, rows: "Iterable[FaceRow]") -> list[int | None]:
        """Enrol faces in one transaction; each one's id, or None for an image already in."""

    def add_face(self, person: str, embedding: "np.ndarray", source: str, image_sha256: str,
                 box: tuple[int, int, int, int] | None = None) -> int | None:
        """`add_faces` of one face."""

    def remove_person(self, name: str) -> int:
        """Remove a person and all their faces (and thumbnails); how many faces went."""

    def remove_face(self, face_id: int) -> str:
        """Remove one face (and its thumbnail); whose it was."""

    def move_face(self, face_id: int, new_name: str) -> tuple[str, str]:
        """Give a face to another person (made when new); (old name, new name)."""

    def rename_person(self, name: str, new_name: str) -> int:
        """Give all of a person's faces to `new_name` (merged when that person exists) in one
        transaction, so no reader sees the person half moved; the number of faces moved."""

    def keep_index_current(self) -> str:
        """After this process's writes, bring what the store derives from its faces (its search
        index) up to date; what was done ("none" when there is nothing to do)."""

    # -- thumbnails (small JPEGs of enrolled faces, keyed by image SHA-256)

    def save_thumbnail(self, image_sha256: str, jpeg: bytes) -> None: ...

    def thumbnail(self, image_sha256: str) -> bytes | None: ...

    def thumbnails(self) -> set[str]:
        """The image SHA-256 of every face that has a thumbnail."""

    # -- lifecycle

    def close(self) -> None: ...

    def __enter__(self) -> "GalleryStore": ...

    def __exit__(self, *exc) -> None: ...


@runtime_checkable
class SearchesInPlace(Protocol):
    """What a store adds when its own index answers nearest-neighbour queries where the faces are
    kept (PostgreSQL: HNSW in the database), so search and identify read only the faces of the
    people a query is shortlisted to, never the whole gallery (recognition/search.py). Optional:
    a store without it (the SQLite file, whose faiss index lives in this process) is read whole
    through `snapshot()`. Apart from the GalleryStore protocol, so a store need not implement it."""

    def nearest(self, vectors: "np.ndarray", k: int) -> "tuple[np.ndarray, np.ndarray]":
        """As GalleryStore.nearest: the index's shortlist, ranked by exact distances."""

    def nearest_exact(self, vectors: "np.ndarray", k: int) -> "list[tuple[np.ndarray, np.ndarray]]":
        """Per vector, (face ids, embeddings) of its k nearest faces by an exact scan in the store
        (no index), for the caller to rank by its own exact distances."""

    def people_enrolment(self, face_ids: "np.ndarray") -> "Enrolment | None":
        """Every face of the people these faces belong to, as an Enrolment (people sorted by name,
        their faces by id, as `enrolment()` orders them); None when none of the ids is in the gallery."""


def searches_in_place(store: object) -> bool:
    """Whether `store` answers nearest-neighbour queries without being read whole (SearchesInPlace)."""
    return isinstance(store, SearchesInPlace)
