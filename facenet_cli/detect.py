"""Face detectors: dlib's HOG (default) and dlib's CNN (MMOD), returning boxes with scores."""
from __future__ import annotations

from dataclasses import dataclass

import dlib
import numpy as np

from .errors import UsageError
from .resources import CNN_FACE_DETECTOR, dlib_model_path

# "hog+cnn": HOG first; dlib's CNN only for the images where HOG finds nothing (profiles,
# tilted heads). The CNN costs about 0.3 s per LFW image on a CPU core, so it runs on few.
DETECTORS = ("hog", "cnn", "hog+cnn")
# "auto" tries without upsampling and upsamples only when nothing is found: HOG at upsample 1
# costs about 4x upsample 0, and most photos' faces are big enough for upsample 0.
AUTO_UPSAMPLE = "auto"
AUTO_MAX_UPSAMPLE = 2


@dataclass(frozen=True)
class FaceBox:
    left: int
    top: int
    right: int
    bottom: int
    score: float = 0.0

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0)

    def to_dlib(self) -> dlib.rectangle:
        return dlib.rectangle(int(self.left), int(self.top), int(self.right), int(self.bottom))

    @classmethod
    def from_dlib(cls, rect, score: float = 0.0) -> "FaceBox":
        return cls(int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()), float(score))


def parse_upsample(value: str | int) -> int | str:
    """`--upsample` accepts a count 0..4 or "auto"."""
    if isinstance(value, int):
        count = value
    elif str(value).strip().lower() == AUTO_UPSAMPLE:
        return AUTO_UPSAMPLE
    else:
        try:
            count = int(value)
        except ValueError:
            raise UsageError(f"--upsample must be a number from 0 to 4 or 'auto', not {value!r}.") from None
    if not 0 <= count <= 4:
        raise UsageError(f"--upsample must be a number from 0 to 4 or 'auto', not {count}.")
    return count


class FaceDetector:
    """Find faces in an RGB uint8 image. Load once per process; call per image."""

    def __init__(self, kind: str = "hog", upsample: int | str = 1):
        if kind not in DETECTORS:
            raise UsageError(f"--detector must be one of {', '.join(DETECTORS)}, not {kind!r}.")
        self.kind = kind
        self.upsample = parse_upsample(upsample)
        if kind in ("hog", "hog+cnn"):
            self._hog = dlib.get_frontal_face_detector()
        if kind in ("cnn", "hog+cnn"):
            self._cnn = dlib.cnn_face_detection_model_v1(str(dlib_model_path(CNN_FACE_DETECTOR)))

    @property
    def stages(self) -> tuple[str, ...]:
        """Detectors to try in turn; a later one runs only when the earlier found no usable face."""
        return ("hog", "cnn") if self.kind == "hog+cnn" else (self.kind,)

    def detect(self, rgb: np.ndarray, accept=lambda boxes: boxes) -> list[FaceBox]:
        """Boxes of the first stage for which `accept(boxes)` is non-empty (by default: any face)."""
        for kind in self.stages:
            chosen = accept(self._detect_with(rgb, kind))
            if chosen:
                return chosen
        return []

    def _detect_with(self, rgb: np.ndarray, kind: str) -> list[FaceBox]:
        if self.upsample == AUTO_UPSAMPLE:
            for count in range(AUTO_MAX_UPSAMPLE + 1):
                boxes = self._detect_at(rgb, kind, count)
                if boxes:
                    return boxes
            return []
        return self._detect_at(rgb, kind, int(self.upsample))

    def _detect_at(self, rgb: np.ndarray, kind: str, upsample: int) -> list[FaceBox]:
        if kind == "hog":
            rects, scores, _ = self._hog.run(rgb, upsample, 0.0)
            return [FaceBox.from_dlib(r, s) for r, s in zip(rects, scores)]
        return [FaceBox.from_dlib(d.rect, d.confidence) for d in self._cnn(rgb, upsample)]
