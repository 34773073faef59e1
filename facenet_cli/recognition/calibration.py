"""The unknown gate calibrated for the gallery in use, against a cohort of strangers.

A threshold calibrated once on LFW galleries cannot suit every gallery: a few people photographed
in varied conditions draw strangers in (the spread term of the gate loosens it exactly for them),
and one photo per person needs a looser gate than five. So the threshold is set per gallery:

- the model record ships a **stranger cohort** (`operating_points["identify"]["cohort"]`):
  embeddings of faces of LFW people in no gallery we measure with, made by
  benchmarks/gallery_calibration.py --make-cohort and checked against their SHA-256 when read;
- every cohort face is answered by the gallery's own Matcher (same method, same gate), so each
  gives the gate score a stranger gets from this very gallery;
- for `--far F` the gallery names a face when its score is below the j-th lowest stranger score,
  j = floor(F * (N + 1)) of N cohort faces: a new stranger exchangeable with the cohort is then
  named with probability j / (N + 1) <= F (a conformal bound, whatever the gallery);
- each answer's FAR is (1 + the cohort scores at or below its own) / (N + 1): the share of this
  gallery's strangers that score as well, never below 1 / (N + 1).

Where the cohort cannot promise, it says so: fewer than MIN_TAIL cohort faces below the threshold
(an F too fine for N faces) keeps the stricter of that threshold and the model's LFW curve; a
person whose photos vary more than LFW people's and who draws several times their share of the
strangers named is named in a warning. Results are cached per gallery state (its id, generation
and revision) in memory and, for a big gallery, in the cache folder for the next command.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from ..store.types import Enrolment, GalleryState
    from .matcher import Matcher, OperatingCurve

# Below this many cohort faces in the tail a threshold is read from, its FAR is mostly noise.
MIN_TAIL = 10
# A person is flagged when their photos vary more than SPREAD_WARN (mean squared distance between
# two of them; the 99th percentile over held-out LFW people with 6+ images is 0.160, 0.138 and
# 0.128 for their first 2, 3 and 5 photos, 0.172 for the 5 that differ most) and they draw at least WARN_MIN_HITS of the cohort
# strangers named, WARN_SHARE_FACTOR times their fair share (capped at WARN_MAX_SHARE of all, so a
# gallery of two can be flagged). Many strangers alone is no warning: some faces simply look
# common, and one photo has no spread to fix.
SPREAD_WARN = 0.16
WARN_MIN_HITS = 3
WARN_SHARE_FACTOR = 2.0
WARN_MAX_SHARE = 0.8
# Cohort faces scored at once: (CHUNK, people) distance matrices stay small on a big gallery.
CHUNK = 256
COHORT_DIR = Path(__file__).resolve().parents[1] / "models" / "cohorts"
CACHE_SUBDIR = "calibration"


# ------------------------------------------------------------------ the cohort

@dataclass(frozen=True)
class StrangerCohort:
    embeddings: np.ndarray  # (N, D) float32, unit rows
    sha256: str
    flip: bool
    people: str  # who they are, for messages and --json

    @property
    def size(self) -> int:
        return len(self.embeddings)


_cohorts: dict[str, StrangerCohort] = {}


def cohort_spec(model_record: dict) -> dict | None:
    """The cohort entry for a gallery's model: the catalogue's when it is a catalogue model with
    the same weights (a gallery made before the cohort shipped gets it too), else its own record's."""
    from ..models.catalogue import CATALOGUE

    name = model_record.get("name")
    sha = (model_record.get("weights") or {}).get("sha256")
    if name in CATALOGUE and CATALOGUE[name].weights is not None and CATALOGUE[name].weights.sha256 == sha:
        points = CATALOGUE[name].operating_points.get("identify") or {}
    else:
        points = (model_record.get("operating_points") or {}).get("identify") or {}
    return points.get("cohort")


def load_cohort(spec: dict, folder: Path | None = None) -> StrangerCohort:
    """The cohort file named by `spec` (in `folder`, default COHORT_DIR, where the package ships
    it), verified against its SHA-256; DataError in one sentence when it is missing or damaged."""
    path = (folder or COHORT_DIR) / spec["filename"]
    cached = _cohorts.get(str(path))
    if cached is not None and cached.sha256 == spec["sha256"]:
        return cached
    try:
        data = path.read_bytes()
    except OSError:
        raise DataError(f"The stranger cohort {path} that calibrates identification is missing; reinstall facenet "
                        "to restore it.") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec["sha256"]:
        raise DataError(f"The stranger cohort {path} is damaged (SHA-256 {actual[:12]}..., expected "
                        f"{spec['sha256'][:12]}...); reinstall facenet to repair it.")
    import io

    embeddings = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)  # float16 rounding
    cohort = StrangerCohort(embeddings, actual, bool(spec.get("flip", True)), str(spec.get("people", "")))
    _cohorts[str(path)] = cohort
    return cohort


# ------------------------------------------------------------------ one gallery's calibration

@dataclass
class GalleryCalibration:
    """The cohort's gate scores against one gallery (its Matcher's method and gate)."""

    scores: np.ndarray  # (N,) each cohort face's gate score for its first choice
    chosen: np.ndarray  # (N,) that choice: index into the enrolment's names
    names: list[str]
    spreads: np.ndarray  # (P,) each person's spread (person_spreads)
    faces_per_person: np.ndarray  # (P,)
    people: str = ""  # who the cohort is
    _sorted: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self._sorted = np.sort(np.asarray(self.scores, dtype=np.float64))

    @property
    def size(self) -> int:
        return len(self.scores)

    def tail(self, far: float) -> int:
        """j: the number of cohort faces the threshold for `far` is read below (floor(F (N + 1)))."""
        return int(math.floor(far * (self.size + 1) + 1e-9))

    def threshold(self, far: float) -> float:
        """The gate threshold naming a new stranger with probability at most `far`: just below the
        j-th lowest cohort score (below every one when j = 0)."""
        j = self.tail(far)
        if j == 0:
            return float(np.nextafter(self._sorted[0], -np.inf))
        return float(np.nextafter(self._sorted[min(j, self.size) - 1], -np.inf))

    def far_at(self, scores) -> np.ndarray:
        """Each score's FAR on this gallery: (1 + cohort scores at or below it) / (N + 1)."""
        below = np.searchsorted(self._sorted, np.asarray(scores, dtype=np.float64), side="right")
        return (1.0 + below) / (self.size + 1.0)

    @property
    def far_range(self) -> tuple[float, float]:
        return 1.0 / (self.size + 1.0), 1.0

    def spread_warnings(self, threshold: float) -> list[dict]:
        """People whose photos vary so much that they draw far more than their share of the cohort
        strangers named at `threshold`."""
        named = self.scores <= threshold
        total = int(named.sum())
        hits = np.bincount(self.chosen[named], minlength=len(self.names))
        share = min(WARN_MAX_SHARE, WARN_SHARE_FACTOR / max(len(self.names), 1))
        flagged = np.flatnonzero((hits >= WARN_MIN_HITS) & (hits >= share * max(total, 1))
                                 & (self.spreads >= SPREAD_WARN))
        return [{"person": self.names[p], "strangers_named": int(hits[p]), "of": total,
                 "faces": int(self.faces_per_person[p]), "spread": round(float(self.spreads[p]), 4)}
                for p in flagged[np.argsort(-hits[flagged], kind="stable")]]


@dataclass
class OperatingPoint:
    """Where the gate of one gallery stands for an asked FAR, and whether it can promise it."""

    far: float
    threshold: float
    source: str  # "gallery cohort", "gallery cohort, capped by the model curve"
    cohort_faces: int
    tail: int  # cohort faces below the threshold the FAR is read from
    resolvable: bool
    warnings: list[dict]
    cohort_people: str = ""

    def to_dict(self) -> dict:
        return {"far": self.far, "threshold": round(self.threshold, 6), "source": self.source,
                "cohort_faces": self.cohort_faces, "stranger_scores_in_tail": self.tail,
                "resolvable": self.resolvable, "spread_warnings": self.warnings, "cohort": self.cohort_people}

    def notes(self) -> list[str]:
        """The sentences a user should read once: why this FAR cannot be promised here."""
        out = []
        if not self.resolvable:
            then = ("the gate uses the stricter of that and the model's LFW curve: fewer faces may be named than "
                    "the FAR allows" if "capped" in self.source else "strangers may be named more or less often "
                    "than asked")
            out.append(f"--far {self.far:g} is finer than this gallery's calibration can measure ({self.tail} of "
                       f"{self.cohort_faces:,} stranger faces score in that tail, {MIN_TAIL} are needed), so {then}.")
        if self.warnings:
            people = ", ".join(f"{w['person']} ({w['strangers_named']} of {w['of']})" for w in self.warnings[:3])
            more = f" and {len(self.warnings) - 3} more" if len(self.warnings) > 3 else ""
            out.append(f"Most strangers this gallery names would be named as {people}{more}: their photos vary so "
                       "much that strangers come close; answers naming them are less sure than their FAR says "
                       "(`facenet gallery list` shows them; enrol clearer photos or remove the odd ones).")
        return out


def operating_point(calibration: GalleryCalibration, far: float, curve: "OperatingCurve | None",
                    people: int) -> OperatingPoint:
    """The threshold for `far` on this gallery; the stricter of it and the model curve's where the
    cohort's tail is too thin to measure `far`."""
    threshold = calibration.threshold(far)
    tail = calibration.tail(far)
    resolvable = tail >= MIN_TAIL
    source = "gallery cohort"
    if not resolvable and curve is not None and min(curve.fars) <= far <= max(curve.fars):
        threshold = min(threshold, curve.threshold(far, people))
        source = "gallery cohort, capped by the model curve"
    return OperatingPoint(far, threshold, source, calibration.size, tail, resolvable,
                          calibration.spread_warnings(threshold), calibration.people)


# ------------------------------------------------------------------ computing and caching

_memory: dict[tuple, GalleryCalibration] = {}
_MEMORY_LIMIT = 8
# Saved to the cache folder only when scoring the cohort took this long (a big gallery): a small
# gallery is scored faster than a file is read, and leaves nothing behind.
DISK_CACHE_MIN_SECONDS = 0.2
DISK_CACHE_FILES = 64  # the oldest go beyond this many galleries


def calibration_key(matcher: "Matcher", cohort: StrangerCohort, state: "GalleryState | None") -> tuple | None:
    """What a calibration depends on: the gallery's state, the cohort and the matcher's gate."""
    if state is None or not state.gallery_id:
        return None
    return (state.gallery_id, state.generation, state.revision, state.faces, cohort.sha256, matcher.method,
            matcher.k if matcher.method == "knn" else 0, json.dumps(matcher.gate, sort_keys=True))


def calibrate(matcher: "Matcher", cohort: StrangerCohort, state: "GalleryState | None" = None,
              cache: bool = True) -> GalleryCalibration:
    """The cohort answered by `matcher`, from the cache when this gallery state was calibrated before."""
    key = calibration_key(matcher, cohort, state) if cache else None
    if key is not None:
        got = _memory.get(key) or _read_cached(key, matcher)
        if got is not None:
            _remember(key, got)
            return got
    started = time.perf_counter()
    scores, chosen = [], []
    for start in range(0, cohort.size, CHUNK):
        order, score, _, _ = matcher.scores(cohort.embeddings[start:start + CHUNK])
        chosen.append(order[:, 0])
        scores.append(score)
    enrolment = matcher.enrolment
    got = GalleryCalibration(np.concatenate(scores), np.concatenate(chosen).astype(np.int64), list(enrolment.names),
                             matcher.spreads, np.bincount(enrolment.person_index, minlength=enrolment.size),
                             cohort.people)
    if key is not None:
        _remember(key, got)
        if time.perf_counter() - started >= DISK_CACHE_MIN_SECONDS:
            _write_cached(key, got)
    return got


def _remember(key: tuple, calibration: GalleryCalibration) -> None:
    if key not in _memory and len(_memory) >= _MEMORY_LIMIT:
        _memory.pop(next(iter(_memory)))
    _memory[key] = calibration


def _cache_file(key: tuple) -> Path:
    from ..models.hub import cache_dir

    return cache_dir() / CACHE_SUBDIR / f"{hashlib.sha256(str(key[0]).encode()).hexdigest()[:32]}.json"


def _read_cached(key: tuple, matcher: "Matcher | None") -> GalleryCalibration | None:
    """A calibration saved by an earlier command on this same gallery state (one file per gallery,
    replaced when the gallery changes); None when absent, stale or unreadable. Without a matcher
    (no faces read) the people's spreads and counts come from the file too."""
    try:
        saved = json.loads(_cache_file(key).read_text())
        if saved.get("key") != list(key):
            return None
        if matcher is None:
            return GalleryCalibration(np.asarray(saved["scores"], dtype=np.float64),
                                      np.asarray(saved["chosen"], dtype=np.int64), list(saved["names"]),
                                      np.asarray(saved["spreads"], dtype=np.float64),
                                      np.asarray(saved["faces_per_person"], dtype=np.int64), saved.get("people", ""))
        enrolment = matcher.enrolment
        if saved["names"] != list(enrolment.names):
            return None
        return GalleryCalibration(np.asarray(saved["scores"], dtype=np.float64),
                                  np.asarray(saved["chosen"], dtype=np.int64), list(enrolment.names), matcher.spreads,
                                  np.bincount(enrolment.person_index, minlength=enrolment.size), saved.get("people", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cached(key: tuple, calibration: GalleryCalibration) -> None:
    """Saved for the next command; a cache folder that cannot be written costs only the recomputation."""
    from ..atomic import write_json_atomic

    if len(calibration.names) > 100_000:  # the names would outweigh the scores: recompute instead
        return
    try:
        path = _cache_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"key": list(key), "names": calibration.names, "people": calibration.people,
                                 "scores": [float(s) for s in calibration.scores],
                                 "chosen": [int(c) for c in calibration.chosen],
                                 "spreads": [float(s) for s in calibration.spreads],
                                 "faces_per_person": [int(n) for n in calibration.faces_per_person]})
        saved = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in saved[:-DISK_CACHE_FILES]:
            old.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


def cached_calibration(matcher, cohort: StrangerCohort, state: "GalleryState") -> GalleryCalibration | None:
    """This gallery state's calibration from the caches alone, without its faces (a store that
    searches in place, recognition/shortlist.py): None when it was not calibrated before.
    `matcher`: anything with the Matcher's method, k and gate."""
    key = calibration_key(matcher, cohort, state)
    if key is None:
        return None
    got = _memory.get(key) or _read_cached(key, None)
    if got is not None:
        _remember(key, got)
    return got


def calibration_for(matcher: "Matcher", enrolment: "Enrolment", state: "GalleryState | None" = None
                    ) -> GalleryCalibration | None:
    """The gallery's calibration when its model ships a cohort embedded as the gallery is (same
    flip); None otherwise (the model curve then stands). DataError for a damaged cohort file."""
    spec = cohort_spec(enrolment.model.record)
    if not spec:
        return None
    if bool(spec.get("flip", True)) != bool(enrolment.model.flip):
        return None
    return calibrate(matcher, load_cohort(spec), state)
