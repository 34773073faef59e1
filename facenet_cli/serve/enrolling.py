"""Enrolment from the camera ("Add person", or a click on a face): which face of a frame, if any,
is filed under the name asked.

One enrolment follows ONE face: the track the user clicked (or, without a click, the face that
was alone in view when it started). A frame is enrolled only when that track is in it, clear,
not recognised as someone else, and close to the first face enrolled (the model's threshold):
so when the person walks off and another takes their place, nothing more is filed under their
name. `added` counts the faces really stored; the reasons for the other frames are in `skipped`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..recognition.identify import UNKNOWN

# Frames enrolled at least this far apart in time (consecutive camera frames are near copies).
ENROL_INTERVAL_S = 0.15


@dataclass
class Enrolling:
    name: str
    wanted: int
    track: int | None = None  # the face followed; None until a frame shows one face alone
    added: int = 0
    last: float = 0.0
    anchor: np.ndarray | None = None  # the first embedding enrolled
    stopped: str | None = None  # why it ended before `wanted` (a sentence), or None
    skipped: dict = field(default_factory=dict)  # reason -> frames not enrolled

    def to_dict(self) -> dict:
        status = {"name": self.name, "added": self.added, "wanted": self.wanted, "track": self.track,
                  "done": self.added >= self.wanted or self.stopped is not None, "skipped": dict(self.skipped)}
        if self.stopped:
            status["stopped"] = self.stopped
        return status

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def refuse_other_person(person: str, answered: str | None) -> None:
    """A face the gallery names as someone else is not enrolled as `person` (one sentence)."""
    if answered not in (None, UNKNOWN, person):
        raise UsageError(f"That face is recognised as {answered}, not {person}: it was not enrolled. If it is "
                         f"{person}, rename {answered} in the gallery instead.")


def choose_face(job: Enrolling, track_ids: list[int], names: list[str], vectors: np.ndarray, clear: list[bool],
                alive: bool, max_distance: float | None, interval_s: float = ENROL_INTERVAL_S) -> int | None:
    """The index of the face of this frame to enrol for `job`, or None (the reason noted in
    job.skipped, or job.stopped when the followed face is gone for good)."""
    if job.track is None:
        if len(track_ids) != 1:
            job.skip("no face" if not track_ids else "several faces")
            return None
        if names[0] not in (UNKNOWN, job.name):
            job.skip("recognised as someone else")
            return None
        job.track = track_ids[0]
    if job.track not in track_ids:
        if not alive:
            job.stopped = "The face being enrolled left the view."
        else:
            job.skip("face not in view")
        return None
    i = track_ids.index(job.track)
    if names[i] not in (UNKNOWN, job.name):
        job.skip("recognised as someone else")
    elif job.anchor is not None and max_distance is not None and \
            float(np.sum((vectors[i].astype(np.float64) - job.anchor) ** 2)) > max_distance:
        job.skip("not the same face")
    elif not clear[i]:
        job.skip("face small or blurred")
    elif time.monotonic() - job.last < interval_s:
        job.skip("too soon after the last one")
    else:
        return i
    return None
