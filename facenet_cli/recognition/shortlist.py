"""identify on a store that searches in place (store.protocol.SearchesInPlace: PostgreSQL), without
reading the gallery: the database shortlists each face's nearest faces, only the shortlisted
people's faces are read, and a Matcher over those people answers as the Matcher over the whole
gallery with the same index would.

Why the answers are the same: a Matcher with an index scores only the people of a query's
nearest faces (matcher.MIN_CANDIDATES, searching deeper until there are enough), and each
person's mean face, spread and closest face come from that person's faces alone; people are
ordered by name in both, and those not shortlisted are infinitely far in both. What the gate
needs of the whole gallery is its number of people (Matcher `people`) and its calibration
against the stranger cohort (calibration.py), which is read from its cache: where this gallery
state was never calibrated, identify reads the gallery whole, calibrates it (caching the result)
and answers as before, so only the first identify after a change reads every face.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..store.protocol import searches_in_place
from .matcher import FIRST_SHORTLIST, Matcher, curve_for_model

if TYPE_CHECKING:
    from .calibration import GalleryCalibration
    from .matcher import Answer


class StoreIndex:
    """A Matcher's index answered by the store; each answer kept, so a query's shortlist is asked of
    the database once though both the depth search here and the Matcher walk it."""

    def __init__(self, store):
        self.store = store
        self._answers: dict[tuple[bytes, int], tuple[np.ndarray, np.ndarray]] = {}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        key = (queries.tobytes(), int(k))
        if key not in self._answers:
            self._answers[key] = self.store.nearest(queries, int(k))
        return self._answers[key]

    def forget(self) -> None:
        self._answers.clear()


class InPlaceMatcher:
    """A Matcher's `answer` over a store that searches in place; its settings (method, threshold,
    FAR, gate, calibration, operating point) as the whole gallery's Matcher would have them."""

    def __init__(self, store, calibration: "GalleryCalibration", faces: int, method: str, far: float | None,
                 threshold: float | None, k: int, curve, probe_vector: np.ndarray):
        self.store, self.faces = store, faces
        self.index = StoreIndex(store)
        self._options = dict(method=method, far=far, threshold=threshold, k=k, curve=curve,
                             people=len(calibration.names))
        self._calibration = calibration
        # The settings come from a Matcher over any one person (here: the nearest to a cohort face).
        ids, _ = store.nearest(probe_vector[None], 1)
        probe = self._matcher(store.people_enrolment(ids[0][ids[0] >= 0]))
        self.method, self.size, self.threshold, self.far = probe.method, probe.size, probe.threshold, probe.far
        self.gate, self.curve, self.calibration, self.point = probe.gate, probe.curve, probe.calibration, probe.point
        self._need = probe.people_needed()

    def _matcher(self, enrolment) -> Matcher:
        matcher = Matcher(enrolment, index=self.index, **self._options)
        matcher.use_calibration(self._calibration)
        return matcher

    def _people_of(self, query: np.ndarray):
        """The faces of the people the Matcher's shortlist of `query` holds, read from the store
        (the depth search of Matcher.shortlist, over the whole gallery's faces)."""
        depth = max(FIRST_SHORTLIST, self._need)
        while True:
            ids, _ = self.index.search(query[None], min(depth, self.faces))
            people = self.store.people_enrolment(ids[0][ids[0] >= 0])
            if (people is not None and people.size >= self._need) or depth >= self.faces:
                return people
            depth *= 4

    def answer(self, queries: np.ndarray, top: int = 3) -> "list[Answer]":
        answers = []
        for query in np.atleast_2d(np.asarray(queries, dtype=np.float32)):
            people = self._people_of(query)
            if people is None:  # the gallery emptied under us: no one to name
                from ..errors import DataError

                raise DataError(f"The gallery {self.store.location} holds no faces any more; add some again.")
            answers.extend(self._matcher(people).answer(query[None], top))
            self.index.forget()
        return answers


def in_place_matcher(store, *, method: str | None, far: float | None, threshold: float | None, k: int,
                     wants_index: "Callable[[int], bool]" = lambda rows: True) -> "InPlaceMatcher | None":
    """The matcher for a store that searches in place and a gallery state already calibrated; None
    where identify must read the gallery: another store, `svm` (fitted on every face), no stranger
    cohort, no calibration cached, or `wants_index(rows an exact scan would compare each face
    with)` False (identify's --index: the whole gallery's people or faces are then scanned)."""
    from .calibration import cached_calibration, cohort_spec, load_cohort

    if not searches_in_place(store):
        return None
    model = store.model
    if model is None:
        return None
    curve = curve_for_model(model.record)
    method = method or (curve.method if curve else "mean")
    spec = cohort_spec(model.record)
    if method == "svm" or not spec or bool(spec.get("flip", True)) != bool(model.flip):
        return None
    cohort = load_cohort(spec)
    state = store.state()
    gate = dict(curve.gate if curve else {"basis": "nearest"})
    calibration = cached_calibration(SimpleNamespace(method=method, k=k, gate=gate), cohort, state)
    if not state.faces or calibration is None:
        return None
    if not wants_index(len(calibration.names) if method == "mean" else state.faces):
        return None
    return InPlaceMatcher(store, calibration, state.faces, method, far, threshold, k, curve, cohort.embeddings[0])
