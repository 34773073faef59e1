"""The values every gallery store hands out and takes, whatever keeps them (store/protocol.py):
the model a gallery is bound to, its faces, its faces as arrays ready to match against
(`Enrolment`), the state a derived index is checked against, and a process's changes since it
opened the store (to patch such an index rather than rebuild it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # annotations only
    from ..models.catalogue import ModelRecord

# Seconds a writer waits for another one before the gallery counts as locked.
DEFAULT_TIMEOUT = 30.0


def model_fingerprint(record: "ModelRecord") -> str:
    """What tells one model's embeddings from another's: the checksum of its weights."""
    return record.weights.sha256 if record.weights is not None else f"untrained:{record.architecture}"


@dataclass(frozen=True)
class GalleryModel:
    """The model whose embeddings a gallery holds."""

    name: str
    ref: str
    fingerprint: str
    align: dict
    dim: int
    flip: bool
    record: dict

    def describe(self) -> str:
        return f"{self.name} ({self.align.get('name')} at {self.align.get('size')} px{', flip' if self.flip else ''})"


@dataclass(frozen=True)
class Face:
    id: int
    person: str
    source: str
    image_sha256: str
    box: tuple[int, int, int, int] | None
    added: float


@dataclass
class Enrolment:
    """The gallery's faces as arrays, ready to match against."""

    embeddings: np.ndarray  # (F, D) float32, unit rows
    person_index: np.ndarray  # (F,) index into `names`
    names: list[str]  # one per person, sorted
    face_ids: np.ndarray  # (F,)
    model: GalleryModel

    @property
    def size(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class GalleryState:
    """What a search index records of the gallery it was built from (face_index.py)."""

    gallery_id: str
    generation: int
    faces: int
    max_face_id: int
    fingerprint: str
    dim: int
    revision: str = ""  # replaced by every write: copies changed apart differ here, whatever else they share


@dataclass
class GalleryChanges:
    """This process's writes to a gallery since it was opened, so an index can be patched:
    `start` is the state before the first write, `end` the generation after the last;
    `contiguous` is False when another writer's transaction came in between."""

    start: GalleryState | None = None
    end: int | None = None
    added: dict[int, np.ndarray] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    contiguous: bool = True


def refuse_other_model(model: GalleryModel | None, location: str, name: str, align: dict, dim: int,
                       fingerprint: str | None, flip: bool | None) -> None:
    """SpecMismatch when faces of model `name` (its alignment, size, weights, flip) cannot join a
    gallery at `location` holding `model`'s (nothing to refuse before the first face)."""
    from ..errors import SpecMismatch

    if model is None:
        return
    other = f"{name} ({align.get('name')} at {align.get('size')} px{', flip' if flip else ''})"
    if align != model.align:
        raise SpecMismatch(f"{location} holds faces aligned with {model.align.get('name')} at "
                           f"{model.align.get('size')} px for {model.name}, not {align.get('name')} at "
                           f"{align.get('size')} px; use another gallery for {name}.")
    if dim != model.dim or (fingerprint is not None and fingerprint != model.fingerprint):
        raise SpecMismatch(f"{location} holds faces of {model.describe()}, not of {other}; embeddings of two "
                           "models cannot be compared, so use another gallery.")
    if flip is not None and flip != model.flip:
        want = "--flip" if model.flip else "--no-flip"
        raise SpecMismatch(f"{location} holds faces of {model.describe()}, embedded "
                           f"{'with' if model.flip else 'without'} the mirror average; use {want}.")


def enrolment_of(rows: list[tuple[int, str, "np.ndarray | bytes"]], model: GalleryModel | None,
                 location: str) -> Enrolment:
    """The Enrolment of (face id, person, embedding) rows sorted by person, then id (an embedding
    may be little-endian float32 bytes); DataError for no faces, or for embeddings of the wrong
    length or not finite (a damaged gallery)."""
    from ..errors import DataError

    if not rows or model is None:
        raise DataError(f"The gallery {location} holds no faces yet; add some with "
                        f"`facenet gallery add {location} KNOWN/`.")
    names = sorted({r[1] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    try:
        embeddings = np.stack([np.frombuffer(r[2], dtype="<f4") if isinstance(r[2], (bytes, memoryview))
                               else np.asarray(r[2]).reshape(-1) for r in rows]).astype(np.float32)
    except ValueError:
        raise DataError(f"Some embeddings in {location} are damaged (wrong length); remove those faces or "
                        "rebuild the gallery.") from None
    if embeddings.shape[1] != model.dim or not np.isfinite(embeddings).all():
        raise DataError(f"Some embeddings in {location} are damaged; rebuild the gallery.")
    return Enrolment(embeddings, np.array([index[r[1]] for r in rows]), names, np.array([r[0] for r in rows]), model)


class NeighbourIndex(Protocol):
    """What a store's nearest-neighbour search answers (store/face_index.py's FaceIndex, or an
    exact scan): for each query, its k nearest face ids (-1 pads) and squared L2 distances (inf pads)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class IndexUse:
    """The index a reader got, and how (`status`: used, built, rebuilt or exact; `reason`: why a
    saved one was not used)."""

    index: NeighbourIndex
    status: str
    reason: str = ""


class ExactIndex:
    """Nearest faces by an exact scan of an enrolment: what a store without an index of its own answers."""

    def __init__(self, enrolment: Enrolment):
        self.enrolment = enrolment

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        vectors = self.enrolment.embeddings
        d = np.maximum(np.sum(queries ** 2, 1)[:, None] + np.sum(vectors ** 2, 1)[None] - 2 * queries @ vectors.T, 0)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        take = min(k, d.shape[1])
        if take:
            order = np.argsort(d, axis=1, kind="stable")[:, :take]
            ids[:, :take] = self.enrolment.face_ids[order]
            distances[:, :take] = np.take_along_axis(d, order, 1)
        return ids, distances
