"""Who is this? Match faces against a gallery, behind an unknown gate calibrated in false alarms.

Matching (`method`): which enrolled person a face looks most like.
- `mean` (default): each person's mean face (the mean of their faces' embeddings, back on the
  unit sphere); people ranked by the distance to it. One template per person, so people with
  more photos get no more chances; on LFW it beat the closest face (benchmarks/identify_lfw.py).
- `nearest`: a person's distance is that of their closest face.
- `knn`: the k nearest faces vote (ties go to the nearer person).
- `svm`: scikit-learn's linear SVC fitted at load on the gallery's faces (as OpenFace's
  classifier); nothing is pickled, the fit is cheap and made from the gallery itself.

The unknown gate: whatever the method proposes, the answer is a name only when the proposed
person's gate score (`gate_scores`: their distance, less a margin over the other people and
their own spread) is at most the threshold of the operating point. The score and the curve of
thresholds come from the model record (`operating_points["identify"]`, made by
benchmarks/identify_lfw.py --calibrate): calibrated on LFW people disjoint from those it is
measured on, per gallery size (a stranger has more chances to resemble someone in a larger
gallery), as thresholds for a list of false-alarm rates (FAR: the share of strangers that get a
name). `--far` picks a point on that curve, interpolated in log(gallery size) and log(FAR);
`--threshold` overrides it with a raw score. Each answer carries the estimated FAR at its own
score: the share of calibration strangers that scored as low.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import BadImage, DataError, NoFace, UsageError

if TYPE_CHECKING:
    from ..align.aligner import FaceAligner
    from ..nets.embedder import Embedder
    from ..store.gallery import Enrolment
    from ..pipeline.photos import PhotoListing

METHODS = ("mean", "nearest", "knn", "svm")
UNKNOWN = "unknown"
DEFAULT_FAR = 0.01
DEFAULT_KNN = 3


# ------------------------------------------------------------------ scores

def person_distances(queries: np.ndarray, enrolment: "Enrolment") -> np.ndarray:
    """(Q, P) squared L2 distance from each query to each person's closest face."""
    from ..nets.embedder import squared_distances

    distances = squared_distances(queries, enrolment.embeddings)
    order = np.argsort(enrolment.person_index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(enrolment.person_index[order]) != 0])
    if not len(queries):
        return np.zeros((0, len(starts)))
    return np.minimum.reduceat(distances[:, order], starts, axis=1)


def person_templates(enrolment: "Enrolment") -> np.ndarray:
    """(P, D) each person's mean face embedding, back on the unit sphere."""
    sums = np.zeros((enrolment.size, enrolment.embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, enrolment.person_index, enrolment.embeddings.astype(np.float64))
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def person_rows(enrolment: "Enrolment") -> tuple[np.ndarray, np.ndarray]:
    """(rows sorted by person, start of each person's run in them): person p's face rows are
    rows[starts[p]:starts[p + 1]] (people without faces do not occur in an enrolment)."""
    rows = np.argsort(enrolment.person_index, kind="stable")
    starts = np.searchsorted(enrolment.person_index[rows], np.arange(enrolment.size + 1))
    return rows, starts


def person_spreads(enrolment: "Enrolment") -> np.ndarray:
    """(P,) each person's mean squared distance between two of their faces (0 with one face)."""
    from ..nets.embedder import squared_distances

    spreads = np.zeros(enrolment.size)
    rows, starts = person_rows(enrolment)
    counts = np.diff(starts)
    for person in np.flatnonzero(counts > 1):  # one pass over the faces, not one per person
        faces = enrolment.embeddings[rows[starts[person]:starts[person + 1]]]
        d = squared_distances(faces, faces)
        spreads[person] = d[np.triu_indices(len(faces), 1)].mean()
    return spreads


def gate_scores(basis_d: np.ndarray, chosen: np.ndarray, gate: dict, spreads: np.ndarray | None = None) -> np.ndarray:
    """The gate score of person `chosen[i]` for query i; lower means more surely that person.

    score = d - a * (d_others - d) - b * spread, where d is the query's distance to the chosen
    person (`basis_d`: to their mean face or closest face, per gate["basis"]), d_others the mean
    distance to the k closest other people (a = gate["margin"], k = gate["cohort"]; a stranger
    tends to be about as far from everyone, a known face much nearer one person), and spread the
    person's own spread between their faces (b = gate["spread"]; a person photographed in many
    conditions matches at larger distances). gate["znorm"] = k instead normalises d by the mean
    and spread of the k closest other people (measured, not kept).
    """
    rows = np.arange(len(chosen))
    d = basis_d[rows, chosen]
    score = d.astype(np.float64).copy()
    if gate.get("znorm") and basis_d.shape[1] > 2:
        # Z-norm against the query's cohort of look-alikes: (d - mean) / std of the k nearest others.
        others = basis_d.astype(np.float64).copy()
        others[rows, chosen] = np.inf
        k = max(2, min(int(gate["znorm"]), basis_d.shape[1] - 1))
        cohort = np.partition(others, k - 1, axis=1)[:, :k]
        return (d - cohort.mean(axis=1)) / np.maximum(cohort.std(axis=1), 1e-6)
    a = float(gate.get("margin", 0.0))
    if a and basis_d.shape[1] > 1:
        others = basis_d.astype(np.float64).copy()
        others[rows, chosen] = np.inf
        k = max(1, min(int(gate.get("cohort", 1)), basis_d.shape[1] - 1))
        nearest_others = np.partition(others, k - 1, axis=1)[:, :k].mean(axis=1)
        score -= a * (nearest_others - d)
    b = float(gate.get("spread", 0.0))
    if b and spreads is not None:
        score -= b * spreads[chosen]
    return score


# ------------------------------------------------------------------ operating points

@dataclass(frozen=True)
class OperatingCurve:
    """Gate thresholds per gallery size and FAR, as calibrated (see the module docstring)."""

    gate: dict
    sizes: tuple[int, ...]
    fars: tuple[float, ...]
    thresholds: tuple[tuple[float, ...], ...]  # [size][far], increasing with far
    default_far: float = DEFAULT_FAR
    method: str = "mean"  # the matching method the gate was chosen with: the default one

    @classmethod
    def from_points(cls, points: dict) -> "OperatingCurve":
        try:
            curve = points["curve"]
            return cls(gate=dict(points["gate"]), sizes=tuple(int(s) for s in curve["sizes"]),
                       fars=tuple(float(f) for f in curve["fars"]),
                       thresholds=tuple(tuple(float(t) for t in row) for row in curve["thresholds"]),
                       default_far=float(points.get("default_far", DEFAULT_FAR)),
                       method=str(points.get("method", "mean")))
        except (KeyError, TypeError, ValueError):
            raise DataError("The model's identification operating points are malformed; reinstall facenet.") from None

    def _row(self, size: int) -> np.ndarray:
        """Thresholds (one per FAR) for a gallery of `size` people, linear in log(size), clamped."""
        logs = np.log(np.asarray(self.sizes, dtype=float))
        table = np.asarray(self.thresholds, dtype=float)
        x = math.log(max(size, 1))
        return np.array([np.interp(x, logs, table[:, j]) for j in range(table.shape[1])])

    def threshold(self, far: float, size: int) -> float:
        if not 0 < far < 1:
            raise UsageError(f"--far is a share of strangers between 0 and 1 (e.g. 0.01 for 1 %), not {far}.")
        lo, hi = min(self.fars), max(self.fars)
        if not lo <= far <= hi:
            raise UsageError(f"--far {far} is outside the calibrated range {lo:g}-{hi:g}; choose a value in it "
                             "or set --threshold.")
        return float(np.interp(math.log(far), np.log(self.fars), self._row(size)))

    def far_at(self, scores: np.ndarray, size: int) -> np.ndarray:
        """Estimated FAR at each gate score (the share of calibration strangers scoring as low);
        beyond the calibrated range the nearest end is reported as a bound."""
        row = self._row(size)
        return np.exp(np.interp(np.asarray(scores, dtype=float), row, np.log(self.fars)))


def operating_curve(record) -> OperatingCurve | None:
    points = (record.operating_points or {}).get("identify") if hasattr(record, "operating_points") else None
    if not points:
        return None
    return OperatingCurve.from_points(points)


def curve_for_model(model_record: dict) -> OperatingCurve | None:
    """The curve of a gallery's model: from the catalogue when it is a catalogue model with the
    same weights (so a gallery made before a recalibration gets the current curve)."""
    from ..models.catalogue import CATALOGUE

    name = model_record.get("name")
    sha = (model_record.get("weights") or {}).get("sha256")
    if name in CATALOGUE and CATALOGUE[name].weights is not None and CATALOGUE[name].weights.sha256 == sha:
        return operating_curve(CATALOGUE[name])
    points = (model_record.get("operating_points") or {}).get("identify")
    return OperatingCurve.from_points(points) if points else None


# ------------------------------------------------------------------ the matcher

@dataclass
class Candidate:
    name: str
    distance: float


@dataclass
class Answer:
    name: str  # a person, or "unknown"
    person: str  # the best candidate, even when the answer is unknown
    distance: float  # squared L2 to that person's closest face
    score: float  # the gate score
    far: float | None  # estimated share of strangers that would score as well; None without a curve
    candidates: list[Candidate]


# With a search index, each query's distances are computed exactly for the people of its nearest
# faces only (the others count as infinitely far): at least this many people, searching deeper
# (x4) until the index's answers hold that many, so the gate's cohort is always among them.
MIN_CANDIDATES = 16
FIRST_SHORTLIST = 64


class Matcher:
    """A gallery's faces, ready to answer; build once, call `answer` on many embeddings.

    `index` (a face_index.FaceIndex over the enrolment's face ids), when given, shortlists the
    people each query is compared with (see MIN_CANDIDATES); `svm` always scores everyone.
    """

    def __init__(self, enrolment: "Enrolment", method: str = "mean", far: float | None = None,
                 threshold: float | None = None, curve: OperatingCurve | None = None, k: int = DEFAULT_KNN,
                 gate: dict | None = None, index=None):
        if method not in METHODS:
            raise UsageError(f"--method must be one of {', '.join(METHODS)}, not {method!r}.")
        if far is not None and threshold is not None:
            raise UsageError("Give --far or --threshold, not both: --threshold overrides the calibrated "
                             "operating point.")
        self.enrolment = enrolment
        self.method = method
        self.k = k
        self.curve = curve
        self.gate = dict(gate if gate is not None else (curve.gate if curve else {"basis": "nearest"}))
        self.size = enrolment.size
        self.templates = person_templates(enrolment)
        self.spreads = person_spreads(enrolment)
        if threshold is not None:
            self.threshold, self.far = float(threshold), None
        elif curve is not None:
            self.far = far if far is not None else curve.default_far
            self.threshold = curve.threshold(self.far, self.size)
        else:
            if far is not None:
                raise UsageError("This model has no calibrated identification operating points, so --far cannot be "
                                 "used; set --threshold (a squared L2 distance).")
            # An uncalibrated model (e.g. a checkpoint of your own): its pair threshold, no FAR estimate.
            self.threshold, self.far = float(enrolment.model.record.get("threshold", 0.0)), None
        self._svm = self._fit_svm() if method == "svm" else None
        self.index = None
        if index is not None:
            self.use_index(index)

    def use_index(self, index) -> None:
        """Shortlist people with `index` (whose keys are this enrolment's face ids) from now on."""
        self.index = index
        self._id_order = np.argsort(self.enrolment.face_ids)
        self._sorted_ids = self.enrolment.face_ids[self._id_order]
        self._rows, self._starts = person_rows(self.enrolment)

    def _rows_of(self, face_ids: np.ndarray) -> np.ndarray:
        """Enrolment rows of face ids the index answered (ids it knows but the enrolment not: dropped)."""
        where = np.clip(np.searchsorted(self._sorted_ids, face_ids), 0, len(self._sorted_ids) - 1)
        return self._id_order[where[self._sorted_ids[where] == face_ids]]

    def _needs_nearest(self) -> bool:
        return self.method in ("nearest", "knn", "svm") or self.size < 2 or self.gate.get("basis", "mean") == "nearest"

    def _fit_svm(self):
        if self.size < 2:
            raise UsageError("--method svm needs at least two people in the gallery; add another person or use "
                             "the default --method mean.")
        from sklearn.svm import LinearSVC

        svm = LinearSVC(C=1.0, dual="auto", max_iter=5000)
        svm.fit(self.enrolment.embeddings, self.enrolment.person_index)
        return svm

    def distances(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(Q, P) squared L2 distances to each person's mean face and to their closest face (the
        latter None when neither the method nor the gate uses it). With an index, only the
        shortlisted people get distances; the others are inf."""
        from ..nets.embedder import squared_distances

        if self.index is not None and self.method != "svm":
            return self._shortlisted_distances(queries)
        nearest = person_distances(queries, self.enrolment) if self._needs_nearest() else None
        return squared_distances(queries, self.templates), nearest

    def shortlist(self, query: np.ndarray, at_least: int) -> tuple[np.ndarray, np.ndarray]:
        """(face rows, people) of the query's nearest faces by the index, deep enough to hold
        `at_least` people (or every face)."""
        depth = max(FIRST_SHORTLIST, at_least)
        total = len(self.enrolment.face_ids)
        while True:
            ids, _ = self.index.search(query[None], min(depth, total))
            rows = self._rows_of(ids[0][ids[0] >= 0])
            people = np.unique(self.enrolment.person_index[rows])
            if len(people) >= at_least or depth >= total:
                return rows, people
            depth *= 4

    def _shortlisted_distances(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from ..nets.embedder import squared_distances

        need = min(self.size, max(MIN_CANDIDATES, int(self.gate.get("cohort", 1)) + 1,
                                  int(self.gate.get("znorm") or 0) + 1, self.k + 1))
        mean_d = np.full((len(queries), self.size), np.inf)
        nearest_d = np.full((len(queries), self.size), np.inf) if self._needs_nearest() else None
        for i, query in enumerate(queries):
            _, people = self.shortlist(query, need)
            mean_d[i, people] = squared_distances(query[None], self.templates[people])[0]
            if nearest_d is not None:
                rows = np.concatenate([self._rows[self._starts[p]:self._starts[p + 1]] for p in people])
                counts = self._starts[people + 1] - self._starts[people]
                d = squared_distances(query[None], self.enrolment.embeddings[rows])[0]
                nearest_d[i, people] = np.minimum.reduceat(d, np.r_[0, np.cumsum(counts)[:-1]])
        return mean_d, nearest_d

    def rank(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(people per query best first (Q, P), mean-face distances, closest-face distances)."""
        mean_d, nearest_d = self.distances(queries)
        if self.method == "mean":
            order = np.argsort(mean_d, axis=1, kind="stable")
        elif self.method == "nearest" or self.size < 2:
            order = np.argsort(nearest_d, axis=1, kind="stable")
        elif self.method == "svm":
            decision = self._svm.decision_function(queries)
            if decision.ndim == 1:  # two people: one column, positive for the second
                decision = np.stack([-decision, decision], axis=1)
            order = np.argsort(-decision, axis=1, kind="stable")
        else:  # knn: the k nearest faces vote; ties go to the nearer person
            from ..nets.embedder import squared_distances

            k = min(self.k, len(self.enrolment.face_ids))
            if self.index is not None:
                nearest = np.stack([self.shortlist(q, 1)[0][:k] for q in queries])
            else:
                face_d = squared_distances(queries, self.enrolment.embeddings)
                nearest = np.argsort(face_d, axis=1, kind="stable")[:, :k]
            votes = np.zeros_like(nearest_d)
            rows = np.repeat(np.arange(len(queries)), k)
            np.add.at(votes, (rows, self.enrolment.person_index[nearest].ravel()), 1.0)
            order = _order_by(votes, nearest_d)
        return order, mean_d, nearest_d

    def scores(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(order, gate score of each query's first choice, mean-face and closest-face distances)."""
        order, mean_d, nearest_d = self.rank(queries)
        basis = nearest_d if self.gate.get("basis", "mean") == "nearest" else mean_d
        return order, gate_scores(basis, order[:, 0], self.gate, self.spreads), mean_d, nearest_d

    def answer(self, queries: np.ndarray, top: int = 3) -> list[Answer]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if len(queries) == 0:
            return []
        order, scores, mean_d, nearest_d = self.scores(queries)
        # Candidates are listed with the distance the method ranks by (mean face, else closest face).
        shown = mean_d if self.method == "mean" else nearest_d
        fars = self.curve.far_at(scores, self.size) if self.curve is not None else None
        answers = []
        for i, person in enumerate(order[:, 0]):
            name = self.enrolment.names[person]
            accepted = bool(scores[i] <= self.threshold)
            answers.append(Answer(
                name=name if accepted else UNKNOWN, person=name, distance=float(shown[i, person]),
                score=float(scores[i]), far=None if fars is None else float(fars[i]),
                candidates=[Candidate(self.enrolment.names[j], float(shown[i, j])) for j in order[i, :max(top, 1)]
                            if np.isfinite(shown[i, j])]))
        return answers


def _order_by(votes: np.ndarray, person_d: np.ndarray) -> np.ndarray:
    """People per query by most votes, then smallest distance."""
    return np.stack([np.lexsort((person_d[i], -votes[i])) for i in range(len(votes))])


# ------------------------------------------------------------------ photos in, answers out

@dataclass
class IdentifiedFace:
    photo: str
    face: int
    box: tuple[int, int, int, int]
    answer: Answer

    def to_dict(self) -> dict:
        a = self.answer
        return {"photo": self.photo, "face": self.face, "box": list(self.box), "name": a.name,
                "best_match": a.person, "distance": round(a.distance, 6), "score": round(a.score, 6),
                "far": None if a.far is None else float(f"{a.far:.3g}"),
                "candidates": [{"name": c.name, "distance": round(c.distance, 6)} for c in a.candidates]}


@dataclass
class Identification:
    gallery: str
    model: str
    method: str
    people: int
    threshold: float
    far: float | None  # the operating point asked for (None with --threshold)
    gate: dict
    faces: list[IdentifiedFace] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # photo -> why it has no face
    photos: int = 0
    far_range: tuple[float, float] | None = None  # the calibrated FARs: estimates are clamped to them
    search: str = "exact"  # "exact", or "index (used|built|rebuilt)": how people were shortlisted

    def to_dict(self) -> dict:
        named = sum(f.answer.name != UNKNOWN for f in self.faces)
        return {"gallery": self.gallery, "model": self.model, "method": self.method, "people": self.people,
                "distance_to": "mean face" if self.method == "mean" else "closest face",
                "threshold": round(self.threshold, 6), "far": self.far, "gate": self.gate,
                "far_range": list(self.far_range) if self.far_range else None,
                "search": self.search, "photos": self.photos, "faces_found": len(self.faces), "named": named,
                "unknown": len(self.faces) - named, "photos_without_face": len(self.problems),
                "faces": [f.to_dict() for f in self.faces], "problems": self.problems}

    def csv_text(self) -> str:
        """`identify --csv`, for spreadsheets: text cells neutralised (spreadsheet_text), the
        candidates as a JSON list (names may hold any separator), a photo's problem in its own column."""
        from ..atomic import json_safe

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["photo", "face", "left", "top", "right", "bottom", "name", "distance", "far", "candidates",
                         "problem"])
        for f in self.faces:
            a = f.answer
            candidates = json.dumps(json_safe([{"name": c.name, "distance": round(c.distance, 4)}
                                               for c in a.candidates]), ensure_ascii=False, allow_nan=False)
            writer.writerow([spreadsheet_text(f.photo), f.face, *f.box, spreadsheet_text(a.name), f"{a.distance:.6f}",
                             "" if a.far is None else f"{a.far:.3g}", spreadsheet_text(candidates), ""])
        for photo, reason in self.problems.items():
            writer.writerow([spreadsheet_text(photo), "", "", "", "", "", "", "", "", "", spreadsheet_text(reason)])
        return out.getvalue()


# What spreadsheets read as the start of a formula (OWASP, "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A text cell of a CSV meant for spreadsheets: a leading ' when it would start a formula,
    so `=HYPERLINK(...)` as a name or file name shows as text and is never evaluated."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def list_photos(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Photos named directly, and every photo under folders, listed as `align` lists (photos.py)."""
    return [path for path, _ in photo_listing(inputs).photos]


def photo_listing(inputs: Sequence[str | os.PathLike]) -> "PhotoListing":
    """The photos to read and the entries that are not read (links to folders are not entered,
    hidden entries and names with control characters are refused: photos.py, align's policy)."""
    from ..pipeline.photos import list_photos as list_inputs

    for item in inputs:
        if not Path(item).exists():
            raise UsageError(f"{Path(item)} does not exist; check the path.")
    listing = list_inputs(inputs)
    if not listing.photos:
        refused = listing.refused
        count = f"{len(refused)} {'entry' if len(refused) == 1 else 'entries'}"
        why = f" ({count} not read, e.g. {refused[0].path}: {refused[0].detail})" if refused else ""
        raise UsageError(f"No photo was found in the inputs{why}; give photos or folders holding photos.")
    return listing


def matcher_for(enrolment, method: str | None = None, far: float | None = None, threshold: float | None = None,
                k: int | None = None, curve: "OperatingCurve | None" = None, index=None) -> "Matcher":
    """The gallery's matcher as `facenet identify` builds it (the web demo uses the same), with the
    model's calibrated curve and, unless `method` is given, the method that curve was made for.
    `index`: a face_index.FaceIndex of the enrolment's faces, to shortlist people with."""
    curve = curve if curve is not None else curve_for_model(enrolment.model.record)
    method = method or (curve.method if curve else "mean")
    options = {"k": k} if k is not None else {}
    return Matcher(enrolment, method=method, far=far, threshold=threshold, curve=curve, index=index, **options)


INDEX_CHOICES = ("auto", "always", "never")


def rows_scanned(enrolment, method: str) -> int:
    """How many vectors exact matching compares each query with: the people's mean faces for
    `mean` (with a mean-face gate), every face otherwise."""
    return enrolment.size if method == "mean" else len(enrolment.face_ids)


def wants_index(use_index: str, rows: int) -> bool:
    """Whether to search with the index: `auto` from face_index.INDEX_MIN_FACES rows on."""
    from ..store.face_index import INDEX_MIN_FACES

    if use_index not in INDEX_CHOICES:
        raise UsageError(f"--index must be one of {', '.join(INDEX_CHOICES)}, not {use_index!r}.")
    return use_index == "always" or (use_index == "auto" and rows >= INDEX_MIN_FACES)


def _load_gallery(gallery_path: str | os.PathLike):
    """(gallery state, enrolment) read together; DataError for a gallery without faces."""
    from ..store.gallery import Gallery

    with Gallery(gallery_path) as gallery:
        state, enrolment = gallery.snapshot()
        if enrolment is None:
            gallery.enrolment()  # raises the one-sentence "no faces yet"
    return state, enrolment


def _index_for(gallery_path, state, enrolment):
    from ..store.face_index import current_index
    from ..store.gallery import Gallery

    with Gallery(gallery_path) as gallery:
        return current_index(gallery, state, enrolment)


def identify(gallery_path: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, method: str | None = None,
             far: float | None = None, threshold: float | None = None, top: int = 3, k: int = DEFAULT_KNN,
             device: str = "auto", detector: str = "hog", upsample: int | str = "auto", model: str | None = None,
             aligner: "FaceAligner | None" = None, embedder: "Embedder | None" = None,
             use_index: str = "auto", on_start: Callable[[int], None] | None = None,
             on_advance: Callable[[int], None] | None = None) -> Identification:
    """`facenet identify GALLERY PHOTO|DIR ...`: every face of every photo, named or `unknown`.

    The query faces are embedded with the gallery's own model and flip setting (`model`, when given,
    must be that model). Pass `aligner`/`embedder` to reuse loaded ones across calls.
    `use_index`: auto (the gallery's search index once exact matching would scan
    face_index.INDEX_MIN_FACES vectors per face), always, or never.
    """
    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}.")
    listing = photo_listing(inputs)
    photos = [path for path, _ in listing.photos]
    state, enrolment = _load_gallery(gallery_path)
    gm = enrolment.model
    curve = curve_for_model(gm.record)
    matcher = matcher_for(enrolment, method=method, far=far, threshold=threshold, k=k, curve=curve)
    method = matcher.method
    embedder, aligner = _engine_for(gallery_path, gm, model, device, detector, upsample, embedder, aligner)
    search = "exact"
    if method != "svm" and wants_index(use_index, rows_scanned(enrolment, method)):
        got = _index_for(gallery_path, state, enrolment)
        matcher.use_index(got.index)
        search = f"index ({got.status})"
    from ..images import read_rgb

    result = Identification(str(gallery_path), gm.name, method, enrolment.size, matcher.threshold, matcher.far,
                            matcher.gate, photos=listing.entries,
                            far_range=(min(curve.fars), max(curve.fars)) if curve else None, search=search)
    # reported, so the photos' counts add up to the entries
    for entry, label in zip(listing.refused, listing.refused_names()):
        result.problems[label] = f"{entry.status}: {entry.detail}"
    if on_start:
        on_start(len(photos))
    for photo, label in zip(photos, listing.names()):  # relative to the folder given
        try:
            found = aligner.align(read_rgb(photo))
        except BadImage as exc:
            result.problems[label] = exc.reason
        except NoFace:
            result.problems[label] = "no face found"
        else:
            vectors = embedder.embed([f.image for f in found])
            for index, (face, answer) in enumerate(zip(found, matcher.answer(vectors, top))):
                box = (face.box.left, face.box.top, face.box.right, face.box.bottom)
                result.faces.append(IdentifiedFace(label, index, box, answer))
        if on_advance:
            on_advance(1)
    return result


def _engine_for(gallery_path, gm, model: str | None, device: str, detector: str, upsample, embedder, aligner):
    """The embedder (the gallery's own model and flip) and the aligner (every face), made unless given."""
    from ..store.gallery import model_fingerprint
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions

    # Files are checked as each part loads (the embedder its weights, the aligner its landmarks),
    # after the model is known to be the gallery's.
    options = PipelineOptions(model=model or gm.ref, device=device, flip=gm.flip, detector=detector,
                              upsample=upsample, faces="all")
    if embedder is None:
        pipeline = FacePipeline.build(options, verify=False)
        record = pipeline.record
        if model_fingerprint(record) != gm.fingerprint or record.embedding_dim != gm.dim:
            raise UsageError(f"{gallery_path} holds faces of {gm.describe()}; use that model "
                             f"(drop --model or pass --model {gm.ref}).")
        embedder = pipeline.embedder
    elif model_fingerprint(embedder.record) != gm.fingerprint or embedder.flip != gm.flip:
        raise UsageError(f"{gallery_path} holds faces of {gm.describe()}, not of the embedder given.")
    else:
        pipeline = FacePipeline.build(options, record=embedder.record, verify=False)
    if aligner is None:
        aligner = pipeline.aligner
    return embedder, aligner


# ------------------------------------------------------------------ search: the most similar faces

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
    search: str  # "exact", or "index (used|built|rebuilt)"
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
    `enrolment` needs embeddings (unit rows), person_index and face_ids."""
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


def search_gallery(gallery_path: str | os.PathLike, photo: str | os.PathLike, *, top: int = 5,
                   use_index: str = "auto", device: str = "auto", detector: str = "hog",
                   upsample: int | str = "auto", model: str | None = None,
                   aligner: "FaceAligner | None" = None, embedder: "Embedder | None" = None) -> SearchResult:
    """`facenet search GALLERY PHOTO --top K`: for every face in the photo, the K most similar
    faces of the gallery (distance, person, source). `use_index`: auto (the gallery's search index
    from face_index.INDEX_MIN_FACES faces on), always, or never (an exact scan)."""
    from ..store.gallery import Gallery
    from ..images import read_rgb

    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}.")
    path = Path(photo)
    if not path.exists():
        raise UsageError(f"{path} does not exist; check the path.")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give one photo to search with (identify takes folders).")
    state, enrolment = _load_gallery(gallery_path)
    gm = enrolment.model
    run_index = wants_index(use_index, len(enrolment.face_ids))
    embedder, aligner = _engine_for(gallery_path, gm, model, device, detector, upsample, embedder, aligner)
    try:
        found = aligner.align(read_rgb(path))
    except NoFace:
        raise NoFace(f"No face was found in {path}, so there is nothing to search for; give a photo with a "
                     "face (or a sharper, larger one).") from None
    vectors = embedder.embed([f.image for f in found])
    result = SearchResult(str(gallery_path), str(path), gm.name, len(enrolment.face_ids), top, "exact")
    index = None
    if run_index:
        got = _index_for(gallery_path, state, enrolment)
        index, result.search, result.index_note = got.index, f"index ({got.status})", got.reason
    ids, distances = nearest_faces(vectors, enrolment, top, index)
    with Gallery(gallery_path) as gallery:
        faces = gallery.faces_by_id(ids[ids >= 0])
    for number, (face, row_ids, row_d) in enumerate(zip(found, ids, distances)):
        matches = [FaceMatch(int(i), faces[int(i)].person, faces[int(i)].source, float(d))
                   for i, d in zip(row_ids, row_d) if i >= 0 and int(i) in faces]
        box = (face.box.left, face.box.top, face.box.right, face.box.bottom)
        result.faces.append(SearchedFace(number, box, matches))
    return result
