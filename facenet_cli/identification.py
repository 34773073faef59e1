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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .errors import BadImage, DataError, NoFace, UsageError

if TYPE_CHECKING:
    from .align import FaceAligner
    from .embed import Embedder
    from .gallery import Enrolment

METHODS = ("mean", "nearest", "knn", "svm")
UNKNOWN = "unknown"
DEFAULT_FAR = 0.01
DEFAULT_KNN = 3


# ------------------------------------------------------------------ scores

def person_distances(queries: np.ndarray, enrolment: "Enrolment") -> np.ndarray:
    """(Q, P) squared L2 distance from each query to each person's closest face."""
    from .embed import squared_distances

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


def person_spreads(enrolment: "Enrolment") -> np.ndarray:
    """(P,) each person's mean squared distance between two of their faces (0 with one face)."""
    from .embed import squared_distances

    spreads = np.zeros(enrolment.size)
    for person in range(enrolment.size):
        faces = enrolment.embeddings[enrolment.person_index == person]
        if len(faces) > 1:
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
    from .catalogue import CATALOGUE

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


class Matcher:
    """A gallery's faces, ready to answer; build once, call `answer` on many embeddings."""

    def __init__(self, enrolment: "Enrolment", method: str = "mean", far: float | None = None,
                 threshold: float | None = None, curve: OperatingCurve | None = None, k: int = DEFAULT_KNN,
                 gate: dict | None = None):
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

    def _fit_svm(self):
        if self.size < 2:
            raise UsageError("--method svm needs at least two people in the gallery; add another person or use "
                             "the default --method mean.")
        from sklearn.svm import LinearSVC

        svm = LinearSVC(C=1.0, dual="auto", max_iter=5000)
        svm.fit(self.enrolment.embeddings, self.enrolment.person_index)
        return svm

    def distances(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q, P) squared L2 distances to each person's mean face and to their closest face."""
        from .embed import squared_distances

        return squared_distances(queries, self.templates), person_distances(queries, self.enrolment)

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
            from .embed import squared_distances

            face_d = squared_distances(queries, self.enrolment.embeddings)
            k = min(self.k, face_d.shape[1])
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
                candidates=[Candidate(self.enrolment.names[j], float(shown[i, j])) for j in order[i, :max(top, 1)]]))
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

    def to_dict(self) -> dict:
        named = sum(f.answer.name != UNKNOWN for f in self.faces)
        return {"gallery": self.gallery, "model": self.model, "method": self.method, "people": self.people,
                "distance_to": "mean face" if self.method == "mean" else "closest face",
                "threshold": round(self.threshold, 6), "far": self.far, "gate": self.gate,
                "far_range": list(self.far_range) if self.far_range else None,
                "photos": self.photos, "faces_found": len(self.faces), "named": named,
                "unknown": len(self.faces) - named, "photos_without_face": len(self.problems),
                "faces": [f.to_dict() for f in self.faces], "problems": self.problems}

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["photo", "face", "left", "top", "right", "bottom", "name", "distance", "far", "candidates"])
        for f in self.faces:
            a = f.answer
            writer.writerow([f.photo, f.face, *f.box, a.name, f"{a.distance:.6f}",
                             "" if a.far is None else f"{a.far:.3g}",
                             ";".join(f"{c.name}:{c.distance:.4f}" for c in a.candidates)])
        for photo, reason in self.problems.items():
            writer.writerow([photo, "", "", "", "", "", "", "", "", reason])
        return out.getvalue()


def list_photos(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Photos named directly, and every image file under folders (sorted)."""
    from .aligned import looks_like_image

    photos: list[str] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise UsageError(f"{path} does not exist; check the path.")
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                photos += [str(Path(dirpath, n)) for n in sorted(filenames)
                           if not n.startswith(".") and looks_like_image(n)]
        else:
            photos.append(str(path))
    if not photos:
        raise UsageError("No photo was found in the inputs; give photos or folders holding photos.")
    return photos


def matcher_for(enrolment, method: str | None = None, far: float | None = None, threshold: float | None = None,
                k: int | None = None, curve: "OperatingCurve | None" = None) -> "Matcher":
    """The gallery's matcher as `facenet identify` builds it (the web demo uses the same), with the
    model's calibrated curve and, unless `method` is given, the method that curve was made for."""
    curve = curve if curve is not None else curve_for_model(enrolment.model.record)
    method = method or (curve.method if curve else "mean")
    options = {"k": k} if k is not None else {}
    return Matcher(enrolment, method=method, far=far, threshold=threshold, curve=curve, **options)


def identify(gallery_path: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, method: str | None = None,
             far: float | None = None, threshold: float | None = None, top: int = 3, k: int = DEFAULT_KNN,
             device: str = "auto", detector: str = "hog", upsample: int | str = "auto", model: str | None = None,
             aligner: "FaceAligner | None" = None, embedder: "Embedder | None" = None,
             on_start: Callable[[int], None] | None = None,
             on_advance: Callable[[int], None] | None = None) -> Identification:
    """`facenet identify GALLERY PHOTO|DIR ...`: every face of every photo, named or `unknown`.

    The query faces are embedded with the gallery's own model and flip setting (`model`, when given,
    must be that model). Pass `aligner`/`embedder` to reuse loaded ones across calls.
    """
    from .gallery import Gallery, model_fingerprint

    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}.")
    photos = list_photos(inputs)
    with Gallery(gallery_path) as gallery:
        enrolment = gallery.enrolment()
    gm = enrolment.model
    curve = curve_for_model(gm.record)
    matcher = matcher_for(enrolment, method=method, far=far, threshold=threshold, k=k, curve=curve)
    method = matcher.method
    if embedder is None:
        from .embed import Embedder
        from .hub import resolve_model

        record = resolve_model(model or gm.ref)
        if model_fingerprint(record) != gm.fingerprint or record.embedding_dim != gm.dim:
            raise UsageError(f"{gallery_path} holds faces of {gm.describe()}; identify with that model "
                             f"(drop --model or pass --model {gm.ref}).")
        embedder = Embedder(record, device=device, flip=gm.flip)
    elif model_fingerprint(embedder.record) != gm.fingerprint or embedder.flip != gm.flip:
        raise UsageError(f"{gallery_path} holds faces of {gm.describe()}, not of the embedder given.")
    if aligner is None:
        from .align import FaceAligner
        from .detect import parse_upsample

        aligner = FaceAligner(embedder.record.align, detector=detector, upsample=parse_upsample(upsample), faces="all")
    from .compare import display_names
    from .images import read_rgb

    result = Identification(str(gallery_path), gm.name, method, enrolment.size, matcher.threshold, matcher.far,
                            matcher.gate, photos=len(photos),
                            far_range=(min(curve.fars), max(curve.fars)) if curve else None)
    if on_start:
        on_start(len(photos))
    for photo, label in zip(photos, display_names(photos)):
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
