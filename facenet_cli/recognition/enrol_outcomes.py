"""What `gallery add` answers for each input (`AddOutcome`, one per input, in an `AddReport`), and
how it tells a face that is in the gallery already under another file (`SameFaces`). Shared by
the two ways of adding: photos (recognition/enrol.py) and `represent` outputs (enrol_reps.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..formats.aligned import printable_name
from ..store.protocol import GalleryStore

# Per-input outcomes of `gallery add`; every input ends in exactly one.
ADD_STATUSES = (
    "added",           # a face was enrolled
    "already-in",      # this very image (same SHA-256) is in the gallery already: not embedded again
    "duplicate",       # its embedding equals a face's in the gallery (a crop or export of it): not enrolled
    "no-face",         # no face found
    "multiple-faces",  # several faces in a known person's photo: none enrolled (use --faces largest)
    "unreadable",      # not an image, corrupt, empty, a special file or a broken link
    "bad-name",        # the person's name or the file's name (a control character) is refused
    "skipped",         # not read, as align: hidden, a link to a folder (not entered), not in a person's folder
)
# Two embeddings closer than this in every component are one face (the same crop embedded twice:
# batches differ by ~1e-7); two photos, even of one person, differ by orders of magnitude more.
SAME_FACE_TOLERANCE = 1e-6


@dataclass
class AddOutcome:
    input: str
    status: str
    person: str = ""
    face_id: int | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return {"input": self.input, "status": self.status, "person": self.person,
                "face_id": self.face_id, "detail": self.detail}


@dataclass
class AddReport:
    gallery: str  # the store's location
    outcomes: list[AddOutcome] = field(default_factory=list)
    seconds: float = 0.0
    # The network's arithmetic for the faces this add embedded (fp32/bf16/int8; `--precision auto`
    # resolved), or a represent output's, from its meta.json; None when nothing was embedded.
    precision: str | None = None

    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in ADD_STATUSES}
        for outcome in self.outcomes:
            counts[outcome.status] += 1
        return counts

    def to_dict(self) -> dict:
        return {"gallery": str(self.gallery), "inputs": len(self.outcomes), "counts": self.counts(),
                "seconds": round(self.seconds, 3), "precision": self.precision,
                "outcomes": [o.to_dict() for o in self.outcomes]}


class SameFaces:
    """The gallery's faces by embedding, to refuse one that is in already under another file: a
    vector within SAME_FACE_TOLERANCE of a face's in every component is that face (an aligned crop
    of a photo already in, a `represent` output of it, the gallery's own export). Read once, sorted
    by the first component, so a check is a binary search, not a scan of the gallery; the faces
    this run enrols are kept in buckets of that component."""

    def __init__(self, gallery: GalleryStore):
        _, enrolment = gallery.snapshot()
        self._labels: list[str] = []
        if enrolment is None:
            self._vectors = np.zeros((0, 1), np.float64)
        else:
            order = np.argsort(enrolment.embeddings[:, 0], kind="stable")
            self._vectors = enrolment.embeddings[order].astype(np.float64)
            self._labels = [f"face {int(enrolment.face_ids[i])} ({enrolment.names[enrolment.person_index[i]]})"
                            for i in order]
        self._keys = self._vectors[:, 0]
        self._new: dict[int, list[tuple[np.ndarray, str]]] = {}

    def find(self, vector: np.ndarray) -> str | None:
        """The face this vector equals, in words, or None."""
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        tol = SAME_FACE_TOLERANCE
        lo, hi = np.searchsorted(self._keys, v[0] - tol, "left"), np.searchsorted(self._keys, v[0] + tol, "right")
        if hi > lo:
            near = np.abs(self._vectors[lo:hi] - v).max(axis=1) <= tol
            if near.any():
                return self._labels[lo + int(np.argmax(near))]
        key = int(np.floor(v[0] / tol))
        for bucket in (key - 1, key, key + 1):
            for other, label in self._new.get(bucket, ()):
                if np.abs(other - v).max() <= tol:
                    return label
        return None

    def note(self, vector: np.ndarray, source: str) -> None:
        """A face this run enrols (so a second file of it later in the run is refused too)."""
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        self._new.setdefault(int(np.floor(v[0] / SAME_FACE_TOLERANCE)), []).append(
            (v, f"{printable_name(source)} (enrolled by this run)"))
