"""dlib's CNN face detector (MMOD, `--detector cnn`): slower, finds turned faces; and the
`hog+cnn` cascade: HOG first, the CNN only for the images where HOG finds nothing (profiles,
tilted heads). The CNN costs about 0.3 s per LFW image on a CPU core, so there it runs on few.
Its weights: the catalogue's `dlib-cnn-detector` file."""
from __future__ import annotations

from functools import lru_cache

from ..models.resources import CNN_FACE_DETECTOR, dlib_model_path
from . import CNN_MIN_SIDE, PIXEL_BUDGET, UPSAMPLE_BUDGET, DetectorStage, FaceBox, register_detector
from .hog import HogStage


class MmodStage(DetectorStage):
    name = "cnn"
    upsample_budget = UPSAMPLE_BUDGET["cnn"]
    pixel_budget = PIXEL_BUDGET["cnn"]

    def __init__(self):
        self._cnn = _cnn_model()

    def find(self, rgb, level: int) -> list[FaceBox]:
        if min(rgb.shape[:2]) < CNN_MIN_SIDE:
            return []  # dlib's CNN fails on such images and leaves its memory corrupt (measured: below 10 px)
        return [FaceBox.from_dlib(d.rect, d.confidence) for d in self._cnn(rgb, level)]


def _cnn_model():
    """dlib's MMOD network, loaded once per process and shared (the file verified on every call)."""
    path = dlib_model_path(CNN_FACE_DETECTOR)
    info = path.stat()
    return _load_cnn(str(path), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=None)
def _load_cnn(path: str, size: int, mtime_ns: int):
    import dlib

    return dlib.cnn_face_detection_model_v1(path)


register_detector("cnn", MmodStage, files=(CNN_FACE_DETECTOR,), help="dlib's MMOD: slower, finds turned faces")
register_detector("hog+cnn", (HogStage, MmodStage), files=(CNN_FACE_DETECTOR,),
                  help="cnn only where hog finds nothing")
