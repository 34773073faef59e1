"""Landmarks and warping: turn a detected face into a model's input crop per an AlignSpec."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import dlib
import numpy as np

from .specs import AlignSpec
from ..choices import MAX_SIZE, MIN_SIZE, FacePolicy, Fallback, values
from ..detect import DEFAULT_DETECTOR, FaceBox, FaceDetector, maps_to_dlib_5, to_dlib_5
from ..errors import MultipleFaces, NoFace, UsageError
from ..models.resources import dlib_model_path, landmarks_file

# "center": the face nearest the image centre. "center-only": only a face whose box covers the
# image centre counts (datasets such as LFW centre the labelled person; a bystander found when
# the person was missed must not stand in for them: the next detector or the fallback does).
FACE_POLICIES = values(FacePolicy)
# No face found: "none" records it; "center" assumes the face where a centred portrait has it;
# "whole" takes the whole image as the face box (photos that are already tight face crops).
FALLBACKS = values(Fallback)
# Output side in pixels, checked here and by the CLI's parser.

# Where the face of a roughly centred portrait sits, as fractions of the image side. Measured
# as the median HOG box over LFW deep-funneled images (250x250): (0.268, 0.320)-(0.700, 0.748)
# of the side; the fallback runs the landmark predictor on this box when no face is detected.
CENTER_BOX_FRACTIONS = (0.27, 0.32, 0.70, 0.75)


def _shape_predictor(points: int):
    """dlib's model, loaded once per process (the 68-point one is 100 MB) and shared; the file
    is located and verified on every call, so a damaged or replaced file is never hidden."""
    path = dlib_model_path(landmarks_file(points))
    info = path.stat()
    return _load_shape_predictor(str(path), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=None)
def _load_shape_predictor(path: str, size: int, mtime_ns: int):
    return dlib.shape_predictor(path)


class LandmarkPredictor:
    """dlib's 68-point or 5-point shape predictor."""

    def __init__(self, points: int = 68):
        if points not in (68, 5):
            raise UsageError(f"Landmark models have 68 or 5 points, not {points}.")
        self.points = points
        self._predictor = _shape_predictor(points)

    def shape(self, rgb: np.ndarray, box: FaceBox) -> dlib.full_object_detection:
        return self._predictor(rgb, box.to_dlib())

    @staticmethod
    def to_array(shape: dlib.full_object_detection) -> np.ndarray:
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


@dataclass
class AlignedFace:
    image: np.ndarray  # (size, size, 3) uint8 RGB
    box: FaceBox
    landmarks: np.ndarray  # (68 or 5, 2) in the source image
    fallback: bool = False


def detector_landmarks_fit(spec: AlignSpec, scheme: str | None) -> bool:
    """Whether a detector's landmarks (in `scheme`) give the points `spec`'s template is defined on
    (dlib's five, as they are or mapped: detect.to_dlib_5), so the aligner warps with them instead
    of running dlib's shape predictor on the box."""
    return maps_to_dlib_5(scheme) and spec.method == "dlib-chip" and spec.landmarks == 5


def shape_from_points(box: FaceBox, points: np.ndarray) -> dlib.full_object_detection:
    """A detector's landmarks in the form dlib's predictor gives them (integer pixels, as its own)."""
    parts = [dlib.point(int(round(float(x))), int(round(float(y)))) for x, y in points]
    return dlib.full_object_detection(box.to_dlib(), parts)


def warp(rgb: np.ndarray, spec: AlignSpec, shape: dlib.full_object_detection) -> np.ndarray:
    """Warp one face to the spec's template."""
    if spec.method == "openface-affine":
        points = LandmarkPredictor.to_array(shape)
        source = points[list(spec.indices)].astype(np.float32)
        target = spec.template_points().astype(np.float32)
        matrix = cv2.getAffineTransform(source, target)
        return cv2.warpAffine(rgb, matrix, (spec.size, spec.size))
    if spec.method == "dlib-chip":
        return np.ascontiguousarray(dlib.get_face_chip(rgb, shape, size=spec.size, padding=spec.padding))
    raise UsageError(f"Unknown alignment method {spec.method!r}.")


def center_box(height: int, width: int) -> FaceBox:
    side = min(height, width)
    x0, y0 = (width - side) / 2.0, (height - side) / 2.0
    l, t, r, b = CENTER_BOX_FRACTIONS
    return FaceBox(int(round(x0 + l * side)), int(round(y0 + t * side)),
                   int(round(x0 + r * side)), int(round(y0 + b * side)), 0.0)


def whole_box(height: int, width: int) -> FaceBox:
    """The whole image as a face box (dlib's rectangles include their right and bottom edge)."""
    return FaceBox(0, 0, max(width - 1, 0), max(height - 1, 0), 0.0)


def fallback_box(kind: str, height: int, width: int) -> FaceBox:
    return whole_box(height, width) if kind == "whole" else center_box(height, width)


def check_size(size: int) -> None:
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise UsageError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, not {size}.")


def choose_faces(boxes: list[FaceBox], policy: str, height: int, width: int) -> list[FaceBox]:
    """Apply the multi-face policy to the detected boxes."""
    if not boxes:
        return []
    if policy == "largest":
        return [max(boxes, key=lambda b: b.area)]
    if policy in ("center", "center-only"):
        cx, cy = width / 2.0, height / 2.0
        if policy == "center-only":
            boxes = [b for b in boxes if b.left <= cx <= b.right and b.top <= cy <= b.bottom]
            if not boxes:
                return []
        return [min(boxes, key=lambda b: (b.center[0] - cx) ** 2 + (b.center[1] - cy) ** 2)]
    if policy == "skip-multi":
        if len(boxes) > 1:
            raise MultipleFaces(f"{len(boxes)} faces found")
        return boxes
    if policy == "all":
        # Left to right, so numbering is stable and readable.
        return sorted(boxes, key=lambda b: (b.left, b.top))
    raise UsageError(f"--faces must be one of {', '.join(FACE_POLICIES)}, not {policy!r}.")


@dataclass
class FaceAligner:
    """Detect, landmark and warp. Holds the dlib models: build once per process."""

    spec: AlignSpec
    detector: str = DEFAULT_DETECTOR  # a registered detector's name (detect.detector_names())
    upsample: int | str = 1
    faces: str = "largest"
    fallback: str = "none"
    pixel_budget: int | None = None  # override the detector's (detect.PIXEL_BUDGET)
    upsample_budget: int | None = None  # override the detector's (detect.UPSAMPLE_BUDGET)
    first_pass_pixels: int | None = None  # big photos' downscaled first pass (detect.FIRST_PASS_PIXELS; 0: off)
    min_face: int | None = None  # narrowest face to find, photo pixels (FaceDetector's; None: the detector's reach)
    _detector: FaceDetector = field(init=False, repr=False)
    _landmarks: LandmarkPredictor = field(init=False, repr=False)

    def __post_init__(self):
        if self.faces not in FACE_POLICIES:
            raise UsageError(f"--faces must be one of {', '.join(FACE_POLICIES)}, not {self.faces!r}.")
        if self.fallback not in FALLBACKS:
            raise UsageError(f"--fallback must be one of {', '.join(FALLBACKS)}, not {self.fallback!r}.")
        check_size(self.spec.size)
        if self.spec.method == "openface-affine" and self.spec.landmarks != 68:
            raise UsageError("OpenFace templates need the 68-point landmarks.")
        self._detector = FaceDetector(self.detector, self.upsample, upsample_budget=self.upsample_budget,
                                      pixel_budget=self.pixel_budget, first_pass_pixels=self.first_pass_pixels,
                                      min_face=self.min_face)
        self._landmarks = LandmarkPredictor(self.spec.landmarks)
        # Boxes that come with landmarks the template is defined on skip the predictor; the rest
        # (other detectors, fallback boxes) get it.
        self._detector_landmarks = detector_landmarks_fit(self.spec, self._detector.landmarks)

    @property
    def first_pass(self) -> str | None:
        """What the last align() did with a big photo's downscaled first pass: "kept", "searched
        again" (at full size), or None (no first pass: a small photo, or upsample not auto)."""
        return self._detector.last_first_pass

    def _shape(self, rgb: np.ndarray, box: FaceBox) -> dlib.full_object_detection:
        if self._detector_landmarks and box.landmarks is not None:
            return shape_from_points(box, to_dlib_5(box.landmarks, self._detector.landmarks))
        return self._landmarks.shape(rgb, box)

    def align_box(self, rgb: np.ndarray, box: FaceBox, fallback: bool = False) -> AlignedFace:
        if not fallback and self._detector_landmarks:
            box = self._detector.with_points(rgb, [box])[0]
        shape = self._shape(rgb, box)
        return AlignedFace(warp(rgb, self.spec, shape), box, LandmarkPredictor.to_array(shape), fallback)

    def align_stand_in(self, path) -> list[AlignedFace]:
        """The faces of a stand-in photo (`--fallback-dir`: the same photo from a second tree), all
        marked `fallback`; its centre box when it has no usable face, since it stands in already;
        [] when it is missing or unreadable."""
        from pathlib import Path

        from ..errors import BadImage
        from ..images import read_rgb

        if not Path(path).is_file():
            return []
        try:
            rgb = read_rgb(path)
        except BadImage:
            return []
        try:
            faces = self.align(rgb)
        except (NoFace, MultipleFaces):
            return [self.align_box(rgb, center_box(rgb.shape[0], rgb.shape[1]), fallback=True)]
        for face in faces:
            face.fallback = True
        return faces

    def align_file(self, path, timings: dict | None = None) -> list[AlignedFace]:
        """`align(read_rgb(path))`, faster for a big JPEG under the downscaled first pass: the
        pass searches a reduced decode (libjpeg's own 1/2-1/8 scaling) while a thread decodes
        the full photo (dlib's HOG and libjpeg both release the GIL, so the two cores share the
        work), and landmarks and warp use the full photo. Raises BadImage like read_rgb, then
        NoFace or MultipleFaces like align. The preview's pixels differ a little from a
        downscaled full decode, so boxes (and crops) may differ slightly from align(read_rgb(...))'s;
        tests/test_big_photos.py holds both to the same tolerance."""
        from concurrent.futures import ThreadPoolExecutor

        from ..images import big_jpeg, read_preview, read_rgb

        clock = _Clock(timings)
        detector = self._detector
        # Would a huge photo get the first pass (HOG, upsample auto), and is this one a big JPEG?
        stage = detector.first_pass_stage
        wanted = stage is not None and detector.first_pass_scale(stage, 1 << 15, 1 << 15) is not None
        if not (wanted and big_jpeg(path, detector.first_pass_pixels)):
            rgb = read_rgb(path)
            clock.lap("decode")
            return self.align(rgb, timings)
        with ThreadPoolExecutor(max_workers=1) as pool:
            full = pool.submit(read_rgb, path)
            preview = read_preview(path, detector.first_pass_pixels)
            chosen, scale = [], None
            if preview is not None:
                small, (height, width) = preview
                scale = detector.first_pass_scale(stage, height, width)
            if scale is not None:
                small = _fit(small, int(width * scale), int(height * scale))
                chosen = detector.first_pass(small, height, width,
                                             lambda boxes: choose_faces(boxes, self.faces, height, width))
            clock.lap("detect")  # the preview's decode included
            rgb = full.result()
        clock.lap("decode")  # what was left of the full decode
        if not chosen or rgb.shape[:2] != (height, width):
            return self.align(rgb, timings, first_pass=scale is None)
        return self._align_boxes(rgb, chosen, False, clock)

    def align(self, rgb: np.ndarray, timings: dict | None = None, first_pass: bool = True) -> list[AlignedFace]:
        """Aligned faces per the face policy; raises NoFace or MultipleFaces. `first_pass=False`:
        no downscaled first pass (align_file ran it already)."""
        clock = _Clock(timings)
        height, width = rgb.shape[:2]
        # The policy runs per detector stage, so that a stage that finds no acceptable face
        # (none at all, or none covering the centre) hands over to the next one.
        chosen = self._detector.detect(rgb, lambda boxes: choose_faces(boxes, self.faces, height, width),
                                       first_pass=first_pass)
        clock.lap("detect")
        fallback = False
        if not chosen:
            if self.fallback == "none":
                raise NoFace("no face found")
            chosen, fallback = [fallback_box(self.fallback, height, width)], True
        return self._align_boxes(rgb, chosen, fallback, clock)

    def _align_boxes(self, rgb: np.ndarray, chosen: list[FaceBox], fallback: bool, clock: "_Clock") -> list[AlignedFace]:
        # Points the template uses (a fallback box is no detector's: dlib's predictor places its points)
        if not fallback and self._detector_landmarks:
            chosen = self._detector.with_points(rgb, chosen)
        shapes = [self._shape(rgb, box) for box in chosen]
        clock.lap("landmarks")
        faces = [AlignedFace(warp(rgb, self.spec, s), b, LandmarkPredictor.to_array(s), fallback)
                 for b, s in zip(chosen, shapes)]
        clock.lap("warp")
        return faces


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` resized to width x height (a preview at most 2x bigger: bilinear)."""
    if image.shape[:2] == (height, width):
        return image
    return np.ascontiguousarray(cv2.resize(image, (max(width, 1), max(height, 1)), interpolation=cv2.INTER_LINEAR))


class _Clock:
    """Accumulate milliseconds per stage into a dict, when one is given."""

    def __init__(self, sink: dict | None):
        self._time = time.perf_counter
        self.sink = sink
        self.last = self._time()

    def lap(self, stage: str) -> None:
        if self.sink is None:
            return
        now = self._time()
        self.sink[stage] = self.sink.get(stage, 0.0) + (now - self.last) * 1000.0
        self.last = now
