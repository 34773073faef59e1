"""Match face embeddings against a gallery's people, behind an unknown gate calibrated in false alarms.

The matching methods, the gate score and the operating curve are described in identify.py's
docstring; this module is the part that needs only embeddings (no photos, no gallery file):
`Matcher(enrolment, ...)` answers many queries, `matcher_for` builds it as `facenet identify`
does (the web demo uses the same).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, UsageError

if TYPE_CHECKING:
    from ..store.types import Enrolment

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
    `people`: the gallery's number of people when `enrolment` holds only the people an index
    shortlisted (a store that searches in place, recognition/shortlist.py): the threshold, the
    shortlist's depth and the gate are then those of the whole gallery.
    """

    def __init__(self, enrolment: "Enrolment", method: str = "mean", far: float | None = None,
                 threshold: float | None = None, curve: OperatingCurve | None = None, k: int = DEFAULT_KNN,
                 gate: dict | None = None, index=None, people: int | None = None):
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
        self.size = enrolment.size if people is None else people
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
        # Set by use_calibration: this gallery's stranger scores (calibration.py), which then give
        # the threshold for the asked FAR and each answer's FAR.
        self.calibration = None
        self.point = None
        if index is not None:
            self.use_index(index)

    def use_calibration(self, calibration) -> None:
        """Take the threshold for the asked FAR (unless --threshold was given) and each answer's
        FAR from `calibration` (a calibration.GalleryCalibration of this matcher); None: keep the curve."""
        if calibration is None:
            return
        from .calibration import operating_point

        self.calibration = calibration
        if self.far is not None:
            self.point = operating_point(calibration, self.far, self.curve, self.size)
            self.threshold = self.point.threshold

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

    def people_needed(self) -> int:
        """How many people an index's shortlist must hold for each query (MIN_CANDIDATES)."""
        return min(self.size, max(MIN_CANDIDATES, int(self.gate.get("cohort", 1)) + 1,
                                  int(self.gate.get("znorm") or 0) + 1, self.k + 1))

    def _shortlisted_distances(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from ..nets.embedder import squared_distances

        need = self.people_needed()
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
        if self.calibration is not None:
            fars = self.calibration.far_at(scores)
        else:
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


def matcher_for(enrolment, method: str | None = None, far: float | None = None, threshold: float | None = None,
                k: int | None = None, curve: "OperatingCurve | None" = None, index=None, state=None,
                calibrate: bool = True) -> "Matcher":
    """The gallery's matcher as `facenet identify` builds it (the web demo uses the same), with the
    model's calibrated curve and, unless `method` is given, the method that curve was made for,
    calibrated for this gallery against the model's stranger cohort (calibration.py; cached by
    `state`, the gallery's GalleryState, when given) unless `calibrate` is False.
    `index`: a face_index.FaceIndex of the enrolment's faces, to shortlist people with."""
    curve = curve if curve is not None else curve_for_model(enrolment.model.record)
    method = method or (curve.method if curve else "mean")
    options = {"k": k} if k is not None else {}
    matcher = Matcher(enrolment, method=method, far=far, threshold=threshold, curve=curve, index=index, **options)
    if calibrate:
        from .calibration import calibration_for

        matcher.use_calibration(calibration_for(matcher, enrolment, state))
    return matcher
