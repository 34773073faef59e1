"""Face detectors: dlib's HOG (default) and dlib's CNN (MMOD), returning boxes with scores.

Pixel budgets keep detection bounded whatever the photo: upsampling (each level is 4x the
pixels) stops where the image would exceed the detector's upsampling budget, and an image above
the detector's pixel budget is searched on a downscaled copy whose boxes are mapped back, so
landmarks and the warp still use the full-resolution photo. Measured on this machine: HOG costs
about 10 bytes and 0.2 us per pixel (16 Mpx: 220 MB, 3 s); dlib's CNN about 1 KB and 17 us per
pixel (1 Mpx: 1 GB, 17 s), so its budget is the size LFW's 250x250 images reach at upsample 2.

Big photos, HOG, `upsample="auto"`: a first pass on a copy downscaled to FIRST_PASS_PIXELS
(2 Mpx: ~0.3 s here instead of ~2 s for a 12 Mpx photo at full size). Its faces are kept when
the smallest of them is at least FIRST_PASS_MIN_BOX pixels wide in the copy: one step of HOG's
own image pyramid (6/5) above the smallest face it finds reliably (HOG_RELIABLE_BOX), so a face
down to 5/6 the width of the smallest face found was within the first pass's reach. Otherwise
(nothing found, a face near the limit, or no face the policy accepts) the photo is searched
again the plain way, at full size. The limit: a face smaller than 5/6 of the smallest face the
first pass found (a bystander far behind a group whose faces are all big) is not looked for;
an explicit `upsample` count (0-4) or `first_pass_pixels=0` always searches the plain way.

`hog-fast`: dlib's HOG detector holds five linear filters (looking ahead, left, right, and ahead
but rotated left or right) over one image pyramid. `hog-fast` searches each level with the
first filter alone (cut out of dlib's own serialized detector: `frontal_sub_detector`) and runs
all five there only when it finds no face the policy accepts. Measured on 500 LFW photos
(benchmarks/align_levers.py): 5.3 ms against 8.7 ms a photo, and on the faces both find a box
from the frontal filter where the full detector preferred another filter's (185 of 500 photos;
see the README for what that does to LFW accuracy). Big photos' downscaled first pass uses all
five filters.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import dlib
import numpy as np

from .choices import Detector, values
from .errors import UsageError
from .resources import CNN_FACE_DETECTOR, dlib_model_path

# "hog+cnn": HOG first; dlib's CNN only for the images where HOG finds nothing (profiles,
# tilted heads). The CNN costs about 0.3 s per LFW image on a CPU core, so it runs on few.
DETECTORS = values(Detector)
# "auto" tries without upsampling and upsamples only when nothing is found: HOG at upsample 1
# costs about 4x upsample 0, and most photos' faces are big enough for upsample 0.
AUTO_UPSAMPLE = "auto"
AUTO_MAX_UPSAMPLE = 2
MAX_UPSAMPLE = 4

# Pixels the detector may see after upsampling, and at most at all (above: downscaled).
UPSAMPLE_BUDGET = {"hog": 4_000_000, "cnn": 1_050_000}
PIXEL_BUDGET = {"hog": 16_000_000, "cnn": 1_050_000}
# Big photos under upsample "auto" (see the module doc). HOG_RELIABLE_BOX was measured on 300
# LFW faces downscaled so that HOG's box has a given width: found 98.0% at 65 px, 99.7% at
# 70-140 px, 92% at 60 px, 26% at 50 px.
FIRST_PASS_PIXELS = 2_000_000
HOG_RELIABLE_BOX = 70
# HOG reports box widths in steps of its pyramid (..., 73, 87, 105, 126 px): a face is at least
# one step above the reliable size when its box is 84 px or more.
FIRST_PASS_MIN_BOX = 84
# The CNN searches only images whose shorter side has at least this many pixels (no face fits
# in fewer anyway).
CNN_MIN_SIDE = 16


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

    def scaled(self, fx: float, fy: float) -> "FaceBox":
        """This box in an image fx times as wide and fy times as high (boxes found on a downscaled copy)."""
        return FaceBox(int(round(self.left * fx)), int(round(self.top * fy)),
                       int(round(self.right * fx)), int(round(self.bottom * fy)), self.score)

    @classmethod
    def from_dlib(cls, rect, score: float = 0.0) -> "FaceBox":
        return cls(int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()), float(score))


def parse_upsample(value: str | int) -> int | str:
    """`--upsample` accepts a count 0..4 or "auto"."""
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif str(value).strip().lower() == AUTO_UPSAMPLE:
        return AUTO_UPSAMPLE
    else:
        try:
            count = int(str(value))
        except ValueError:
            raise UsageError(f"--upsample must be a number from 0 to 4 or 'auto', not {value!r}.") from None
    if not 0 <= count <= MAX_UPSAMPLE:
        raise UsageError(f"--upsample must be a number from 0 to 4 or 'auto', not {count}.")
    return count


@dataclass(frozen=True)
class DetectionPlan:
    """How one detector stage searches one image: at `scale` (1.0, or less when the image is
    over the pixel budget), at these upsampling levels in turn until a face is accepted."""

    scale: float
    levels: tuple[int, ...]


def detection_plan(height: int, width: int, upsample: int | str, upsample_budget: int,
                   pixel_budget: int) -> DetectionPlan:
    pixels = max(height * width, 1)
    scale = 1.0
    if pixels > pixel_budget:
        scale = (pixel_budget / pixels) ** 0.5
        pixels = int(height * scale) * int(width * scale)
    # The highest level whose upsampled image (4x the pixels per level) fits the budget.
    allowed = 0
    while allowed < MAX_UPSAMPLE and pixels * 4 ** (allowed + 1) <= upsample_budget:
        allowed += 1
    if upsample == AUTO_UPSAMPLE:
        return DetectionPlan(scale, tuple(range(min(AUTO_MAX_UPSAMPLE, allowed) + 1)))
    return DetectionPlan(scale, (min(int(upsample), allowed),))


class FaceDetector:
    """Find faces in an RGB uint8 image. Load once per process; call per image.

    `upsample_budget` / `pixel_budget` override the per-detector budgets (pixels)."""

    def __init__(self, kind: str = "hog", upsample: int | str = 1, upsample_budget: int | None = None,
                 pixel_budget: int | None = None, first_pass_pixels: int | None = None):
        if kind not in DETECTORS:
            raise UsageError(f"--detector must be one of {', '.join(DETECTORS)}, not {kind!r}.")
        self.kind = kind
        self.upsample = parse_upsample(upsample)
        self._budgets = {stage: (upsample_budget or UPSAMPLE_BUDGET[stage], pixel_budget or PIXEL_BUDGET[stage])
                         for stage in ("hog", "cnn")}
        self.first_pass_pixels = FIRST_PASS_PIXELS if first_pass_pixels is None else int(first_pass_pixels)
        self.last_first_pass: str | None = None  # "kept", "searched again" or None: what detect() did
        self._frontal = None
        if kind in ("hog", "hog+cnn", "hog-fast"):
            self._hog = _hog_model()
        if kind == "hog-fast":
            self._frontal = _frontal_model()
        if kind in ("cnn", "hog+cnn"):
            self._cnn = _cnn_model()

    @property
    def stages(self) -> tuple[str, ...]:
        """Detectors to try in turn; a later one runs only when the earlier found no usable face."""
        return {"hog+cnn": ("hog", "cnn"), "hog-fast": ("hog",)}.get(self.kind, (self.kind,))

    def plan(self, stage: str, height: int, width: int) -> DetectionPlan:
        upsample_budget, pixel_budget = self._budgets[stage]
        return detection_plan(height, width, self.upsample, upsample_budget, pixel_budget)

    def first_pass_scale(self, stage: str, height: int, width: int) -> float | None:
        """The scale of the downscaled first pass for a photo this big, or None (no first pass):
        HOG under upsample "auto", photos over twice FIRST_PASS_PIXELS (below, it saves little)."""
        if stage != "hog" or self.upsample != AUTO_UPSAMPLE or self.first_pass_pixels <= 0:
            return None
        if height * width <= 2 * self.first_pass_pixels:
            return None
        return (self.first_pass_pixels / (height * width)) ** 0.5

    def first_pass(self, small: np.ndarray, height: int, width: int, accept=lambda boxes: boxes) -> list[FaceBox]:
        """The downscaled first pass on `small`, a copy of a `height` x `width` photo: the boxes
        (in the photo's coordinates) that `accept` chooses when the rule of the module doc keeps
        them, else [] (then the photo needs the plain search). Sets `last_first_pass`."""
        boxes = self._detect_at(small, "hog", 0)
        self.last_first_pass = "searched again"
        if boxes and min(min(b.width, b.height) for b in boxes) >= FIRST_PASS_MIN_BOX:
            fx, fy = width / small.shape[1], height / small.shape[0]
            chosen = accept([b.scaled(fx, fy) for b in boxes])
            if chosen:
                self.last_first_pass = "kept"
                return chosen
        return []

    def detect(self, rgb: np.ndarray, accept=lambda boxes: boxes, first_pass: bool = True) -> list[FaceBox]:
        """Boxes (in `rgb`'s coordinates) of the first stage and level for which `accept(boxes)`
        is non-empty (by default: any face). `first_pass=False`: no downscaled first pass (the
        caller ran it already, on a preview)."""
        height, width = rgb.shape[:2]
        if first_pass:
            self.last_first_pass = None
        for stage in self.stages:
            scale = self.first_pass_scale(stage, height, width) if first_pass else None
            if scale is not None:
                chosen = self.first_pass(_fast_downscale(rgb, scale), height, width, accept)
                if chosen:
                    return chosen
            plan = self.plan(stage, height, width)
            image = rgb if plan.scale == 1.0 else _downscale(rgb, plan.scale)
            fx, fy = width / image.shape[1], height / image.shape[0]
            for level in plan.levels:
                found, chosen = self._search_level(image, stage, level, accept,
                                                   None if image is rgb else (fx, fy))
                if found:
                    # Upsampling goes on only while nothing at all is found; the policy then
                    # decides, and a stage without an acceptable face hands over to the next.
                    if chosen:
                        return chosen
                    break
        return []

    def _search_level(self, image: np.ndarray, stage: str, level: int, accept,
                      scale: tuple[float, float] | None) -> tuple[bool, list[FaceBox]]:
        """One level of one stage: (whether any face was found, the faces `accept` chose). For
        hog-fast the frontal filter goes first, all five filters only where it finds no face
        the policy accepts."""
        filters = ("frontal", "all") if stage == "hog" and self._frontal is not None else ("all",)
        for which in filters:
            boxes = self._detect_at(image, stage, level, frontal=which == "frontal")
            if scale is not None:
                boxes = [b.scaled(*scale) for b in boxes]
            if boxes:
                chosen = accept(boxes)
                if chosen or which == "all":
                    return True, chosen
        return False, []

    def _detect_at(self, rgb: np.ndarray, kind: str, upsample: int, frontal: bool = False) -> list[FaceBox]:
        if kind == "hog":
            rects, scores, _ = (self._frontal if frontal else self._hog).run(rgb, upsample, 0.0)
            return [FaceBox.from_dlib(r, s) for r, s in zip(rects, scores)]
        if min(rgb.shape[:2]) < CNN_MIN_SIDE:
            return []  # dlib's CNN fails on such images and leaves its memory corrupt (measured: below 10 px)
        return [FaceBox.from_dlib(d.rect, d.confidence) for d in self._cnn(rgb, upsample)]


@lru_cache(maxsize=None)
def _hog_model():
    """dlib's HOG detector, once per process and shared: read from the weights cache (~10 ms)
    rather than built (`get_frontal_face_detector` costs about 0.7 s of CPU)."""
    from .hub import cached_hog_detector

    return cached_hog_detector()


@lru_cache(maxsize=None)
def _frontal_model():
    """The frontal filter of dlib's HOG detector alone, once per process (~20 ms)."""
    return frontal_sub_detector(_hog_model())


# dlib's frontal face detector: five filters, each a column of 3,101 weights (10x10 cells of 31
# HOG features, and a bias), the frontal one first.
HOG_FILTERS = 5
HOG_FILTER_WEIGHTS = 3101


def _read_dlib_int(data: bytes, pos: int) -> tuple[int, int]:
    """One integer as dlib serializes it: a byte of (sign bit, byte count), then the bytes."""
    head = data[pos]
    size = head & 0x0F
    if size > 8:
        raise ValueError("not an integer")
    value = int.from_bytes(data[pos + 1:pos + 1 + size], "little")
    return (-value if head & 0x80 else value), pos + 1 + size


def hog_filter_spans(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Where dlib's serialized HOG detector keeps its filters: the offset of their count and
    the byte span of each. dlib writes them last (a count, then per filter a column matrix whose
    doubles are two integers each), after a short header: the count is at the first offset from
    which five filters end the file exactly. ValueError when the file is not laid out that way."""
    for start in range(len(data) - 2):
        try:
            count, pos = _read_dlib_int(data, start)
            if count != HOG_FILTERS:
                continue
            spans = []
            for _ in range(count):
                begin = pos
                rows, pos = _read_dlib_int(data, pos)
                cols, pos = _read_dlib_int(data, pos)
                if abs(rows) != HOG_FILTER_WEIGHTS or abs(cols) != 1:
                    raise ValueError("not a filter")
                for _ in range(2 * HOG_FILTER_WEIGHTS):  # mantissa and exponent of each double
                    _, pos = _read_dlib_int(data, pos)
                spans.append((begin, pos))
            if pos == len(data):
                return start, spans
        except (ValueError, IndexError):
            continue
    raise ValueError("no HOG filters found")


def frontal_sub_detector(detector, index: int = 0):
    """dlib's HOG detector with one of its five filters (by default the frontal one): its own
    serialized file with the other four cut out. Raises DataError when dlib lays the file out
    otherwise (another version)."""
    import tempfile

    from .errors import DataError

    with tempfile.TemporaryDirectory(prefix="facenet-hog-") as folder:
        whole = f"{folder}/frontal.svm"
        detector.save(whole)
        with open(whole, "rb") as fh:
            data = fh.read()
        try:
            start, spans = hog_filter_spans(data)
        except ValueError:
            raise DataError(f"dlib {dlib.__version__} stores its HOG detector in a layout hog-fast does not "
                            "know; use --detector hog.") from None
        begin, end = spans[index]
        part = f"{folder}/frontal-{index}.svm"
        with open(part, "wb") as fh:
            fh.write(data[:start] + bytes([1, 1]) + data[begin:end])  # a count of one, then that filter
        return dlib.fhog_object_detector(part)


def _cnn_model():
    """dlib's MMOD network, loaded once per process and shared (the file verified on every call)."""
    path = dlib_model_path(CNN_FACE_DETECTOR)
    info = path.stat()
    return _load_cnn(str(path), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=None)
def _load_cnn(path: str, size: int, mtime_ns: int):
    return dlib.cnn_face_detection_model_v1(path)


def _downscale(rgb: np.ndarray, scale: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


def _fast_downscale(rgb: np.ndarray, scale: float) -> np.ndarray:
    """`rgb` resized by `scale` (< 1) for a detection pass: exact halvings by pixel averaging
    (OpenCV's fast path), then bilinear for the rest (at most 2x). INTER_AREA straight to an
    arbitrary size costs 130 ms on a 12 Mpx photo here, this 8-25 ms; HOG finds the same faces."""
    height, width = rgb.shape[:2]
    target = (max(1, int(width * scale)), max(1, int(height * scale)))
    image = rgb
    while image.shape[1] // 2 >= target[0] and image.shape[0] // 2 >= target[1]:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) != target:
        image = cv2.resize(image, target, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)
