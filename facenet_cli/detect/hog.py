"""dlib's HOG face detector (`--detector hog`): five linear filters (looking ahead,
left, right, and ahead but rotated left or right) over one image pyramid. Frontal faces of about
80 px and up; ~9 ms a 250x250 LFW photo on one core. Big photos get the downscaled first pass."""
from __future__ import annotations

from functools import lru_cache

from . import FIRST_PASS_MIN_BOX, PIXEL_BUDGET, UPSAMPLE_BUDGET, DetectorStage, FaceBox, register_detector


class HogStage(DetectorStage):
    name = "hog"
    upsample_budget = UPSAMPLE_BUDGET["hog"]
    pixel_budget = PIXEL_BUDGET["hog"]
    first_pass_min_box = FIRST_PASS_MIN_BOX

    def __init__(self):
        self._hog = _hog_model()

    def find(self, rgb, level: int) -> list[FaceBox]:
        return run_hog(self._hog, rgb, level)


def run_hog(detector, rgb, level: int) -> list[FaceBox]:
    """Boxes and scores of a dlib HOG detector (all five filters, or one cut out of them)."""
    rects, scores, _ = detector.run(rgb, level, 0.0)
    return [FaceBox.from_dlib(r, s) for r, s in zip(rects, scores)]


@lru_cache(maxsize=None)
def _hog_model():
    """dlib's HOG detector, once per process and shared: read from the weights cache (~10 ms)
    rather than built (`get_frontal_face_detector` costs about 0.7 s of CPU)."""
    from ..models.hub import cached_hog_detector

    return cached_hog_detector()


register_detector("hog", HogStage, help="fast")
