"""Per-socket face tracks, so that a name shows only once a face has been seen clearly in a few
consecutive frames and labels do not flicker.

A face is "clear" when its box is large enough and its aligned crop sharp enough (variance of
the Laplacian, a standard focus measure). Tracks are matched frame to frame by box overlap (IoU);
a track becomes stable after `STABLE_FRAMES` clear frames in a row and stays stable while it is
followed, so one blurred frame does not hide a name already shown.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Smallest face (box width in frame pixels) that counts as seen clearly.
MIN_CLEAR_FACE_PX = 60
# Variance of the Laplacian of the grey 150 px aligned crop below which it counts as blurred.
# Measured on 12 LFW faces (250 px photos, already soft) scaled to 400 px in a 640x480 frame:
# 15-125 as they are, 7-28 after a Gaussian blur of sigma 2, 5-15 at sigma 3; a webcam's own
# frames are sharper (tests/test_serve_http.py::test_blurred_face_never_gets_a_name).
MIN_SHARPNESS = 12.0
STABLE_FRAMES = 3
MIN_IOU = 0.3
# Frames a face may go undetected and keep its track (and its name, and an enrolment following it).
KEEP_MISSED = 3


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB uint8 crop (higher is sharper)."""
    import cv2

    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    id: int
    box: tuple[int, int, int, int]
    clear_run: int = 0
    stable: bool = False
    vector: np.ndarray | None = None  # the face's last embedding: who the track follows
    missed: int = 0  # frames in a row without this face


@dataclass
class Tracker:
    """`max_distance`: the squared L2 distance beyond which two faces are different people (the
    model's threshold); a box where another person's face was is a new track, so a track (and an
    enrolment following it) never passes from one person to the next, even in the same place."""

    stable_frames: int = STABLE_FRAMES
    max_distance: float | None = None
    tracks: list[Track] = field(default_factory=list)
    _next_id: int = 1

    def _same_face(self, track: Track, vector) -> bool:
        if vector is None or track.vector is None or self.max_distance is None:
            return True
        return float(np.sum((np.asarray(track.vector, np.float64) - np.asarray(vector, np.float64)) ** 2)) \
            <= self.max_distance

    def update(self, boxes: list[tuple[int, int, int, int]], clear: list[bool], vectors=None) -> list[Track]:
        """One frame's faces in, the track of each face out (same order). A track unmatched for
        more than KEEP_MISSED frames ends (one missed detection does not end an enrolment)."""
        vectors = [None] * len(boxes) if vectors is None else list(vectors)
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        matched: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < MIN_IOU:
                break
            if ti in used or bi in matched or not self._same_face(self.tracks[ti], vectors[bi]):
                continue
            used.add(ti)
            matched[bi] = self.tracks[ti]
        result = []
        for bi, box in enumerate(boxes):
            track = matched.get(bi)
            if track is None:
                track = Track(self._next_id, box)
                self._next_id += 1
            track.box, track.missed = box, 0
            if vectors[bi] is not None:
                track.vector = vectors[bi]
            track.clear_run = track.clear_run + 1 if clear[bi] else 0
            if track.clear_run >= self.stable_frames:
                track.stable = True
            result.append(track)
        kept = []
        for ti, track in enumerate(self.tracks):
            if ti not in used:
                track.missed += 1
                if track.missed <= KEEP_MISSED:
                    kept.append(track)
        self.tracks = result + kept
        return result

    def alive(self, track_id: int) -> bool:
        """Whether a track may still be seen again (in view, or missed only briefly)."""
        return any(t.id == track_id for t in self.tracks)
