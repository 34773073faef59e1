"""Face detectors behind one protocol and a registry: image -> boxes with scores (and, from
detectors that find them, five landmarks).

One file per detector in this package registers itself (`register_detector`, as catalogue.py
registers models): `hog.py` (dlib's HOG), `hog_fast.py` (its frontal filter first), `hog_onet.py` (that
with MTCNN's O-net for the landmarks: the default),
`mmod.py` (dlib's CNN, and the hog+cnn cascade) and `mtcnn.py` (MTCNN in PyTorch, with five
landmarks that the aligner maps to dlib's: `register_landmark_scheme`). A detector is one or
more *stages* (`DetectorStage`: one search of one image at one upsampling level); `FaceDetector` runs them with
everything detectors share: pixel budgets, upsampling plans, the downscaled first pass of big
photos and the face policy (`accept`). Adding a detector is one new file here (and a catalogue
record for its weights): a `DetectorStage` subclass whose `find` returns `FaceBox`es, and one
`register_detector` call. The files are imported when a name is first needed; none imports dlib,
OpenCV or numpy before it detects, so `facenet --help` (which lists the names) stays light.

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
A stage takes part in the first pass when it sets `first_pass_min_box` (today HOG only).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from ..errors import UsageError

if TYPE_CHECKING:
    import numpy as np

# The detector every command uses unless told otherwise (docs/SPEED.md has the figures that chose it).
DEFAULT_DETECTOR = "hog-onet"

# "auto" tries without upsampling and upsamples only when nothing is found: HOG at upsample 1
# costs about 4x upsample 0, and most photos' faces are big enough for upsample 0.
AUTO_UPSAMPLE = "auto"
AUTO_MAX_UPSAMPLE = 2
MAX_UPSAMPLE = 4

# Pixels the detector may see after upsampling, and at most at all (above: downscaled), per
# stage name of the built-in detectors.
UPSAMPLE_BUDGET = {"hog": 4_000_000, "cnn": 1_050_000, "mtcnn": 900_000}
PIXEL_BUDGET = {"hog": 16_000_000, "cnn": 1_050_000, "mtcnn": 4_000_000}
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

# Landmark schemes a stage may give with its boxes. "dlib-5": the five points of dlib's 5-point
# shape predictor, in its order (two corners of each eye, then the bottom of the nose): the
# dlib-chip template's own points, so the aligner uses them instead of running the predictor.
DLIB_5 = "dlib-5"
# MTCNN's five points: centre of the left and the right eye (as seen in the image), tip of the
# nose, left and right mouth corner. Not dlib's points: detect/mtcnn.py maps them to dlib's.
MTCNN_5 = "mtcnn-5"

# Schemes whose points the dlib-chip template can use, each with the function that gives dlib's
# five points from its own (DLIB_5: as they are). A detector file adds its scheme with
# `register_landmark_scheme`; the aligner warps with the mapped points instead of running dlib's
# predictor, where the mapping was measured to align better (detect/mtcnn.py says how).
_TO_DLIB_5: dict[str, Callable[["np.ndarray"], "np.ndarray"]] = {DLIB_5: lambda points: points}


def register_landmark_scheme(scheme: str, to_dlib_5: Callable[["np.ndarray"], "np.ndarray"]) -> None:
    """Let the aligner use boxes' points of `scheme`: `to_dlib_5((5, 2) points) -> (5, 2)` gives
    dlib's five points (two corners of each eye, the base of the nose) in image coordinates."""
    if scheme in _TO_DLIB_5:
        raise ValueError(f"landmark scheme {scheme!r} registered twice")
    _TO_DLIB_5[scheme] = to_dlib_5


def maps_to_dlib_5(scheme: str | None) -> bool:
    """Whether points of `scheme` can stand in for dlib's 5-point predictor."""
    _load_builtins()
    return scheme in _TO_DLIB_5


def to_dlib_5(points: np.ndarray, scheme: str) -> np.ndarray:
    """A box's points of `scheme` as dlib's five points (KeyError for a scheme that has no mapping)."""
    return _TO_DLIB_5[scheme](points)


@dataclass(frozen=True)
class FaceBox:
    left: int
    top: int
    right: int
    bottom: int
    score: float = 0.0
    # (5, 2) float32 image coordinates in the detector's landmark scheme (FaceDetector.landmarks),
    # or None. Not part of equality or hash: a box is the same box with or without its points.
    landmarks: np.ndarray | None = field(default=None, compare=False)

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

    def to_dlib(self):
        import dlib

        return dlib.rectangle(int(self.left), int(self.top), int(self.right), int(self.bottom))

    def scaled(self, fx: float, fy: float) -> "FaceBox":
        """This box in an image fx times as wide and fy times as high (boxes found on a downscaled copy)."""
        points = None
        if self.landmarks is not None:
            points = (self.landmarks * [fx, fy]).astype("float32")
        return FaceBox(int(round(self.left * fx)), int(round(self.top * fy)),
                       int(round(self.right * fx)), int(round(self.bottom * fy)), self.score, points)

    @classmethod
    def from_dlib(cls, rect, score: float = 0.0, landmarks: np.ndarray | None = None) -> "FaceBox":
        return cls(int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()), float(score), landmarks)


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


# ---------------------------------------------------------------- the protocol


class DetectorStage:
    """One detector's search of one image: what a detector file implements.

    `find(rgb, level)`: the faces in an RGB uint8 image upsampled `level` times (each level
    doubles the sides; dlib's detectors take the count themselves), as FaceBoxes in `rgb`'s
    coordinates with their scores and, when `landmarks` names a scheme, their points. Load the
    model in `__init__` (the runner builds a stage once per FaceDetector), importing heavy
    modules there, not at the top of the file.
    """

    name: str = ""  # the stage's name in plans and budgets ("hog", "cnn")
    upsample_budget: int = UPSAMPLE_BUDGET["cnn"]  # pixels after upsampling (see the module doc)
    pixel_budget: int = PIXEL_BUDGET["cnn"]  # pixels searched at all; above: a downscaled copy
    first_pass_min_box: int | None = None  # set: big photos get the downscaled first pass
    landmarks: str | None = None  # the scheme of the boxes' points (DLIB_5), None: no points
    narrow: bool = False  # has a cheaper `find_narrow`, tried first at each level (hog-fast)
    # The smallest face width to look for, in pixels of the image `find` gets, or None (the
    # stage's own reach). FaceDetector sets it per image from its `min_face`; a stage with an
    # image pyramid (mtcnn) starts its pyramid there, the others ignore it.
    min_face: float | None = None
    # About the narrowest face found at level 0, in pixels of the image searched (dlib's HOG and
    # CNN: 80), and whether the search starts at `min_face` when one is set (then it is the reach).
    reach: int = 80
    searches_from_min_face: bool = False
    # Gives its landmarks only for the boxes the face policy chose (`points_for`), not with
    # every box `find` returns: a landmark network run per box costs more than the search's
    # spare boxes are worth (hog-onet).
    points_on_demand: bool = False

    def find(self, rgb: np.ndarray, level: int) -> list[FaceBox]:
        raise NotImplementedError

    def points_for(self, rgb: np.ndarray, boxes: list[FaceBox]) -> list[FaceBox]:
        """`boxes` (in `rgb`'s coordinates) with their points, where `points_on_demand`."""
        return boxes

    def find_narrow(self, rgb: np.ndarray, level: int) -> list[FaceBox]:
        return self.find(rgb, level)


class Detector(Protocol):
    """What the aligner and the library use: faces in an RGB uint8 image. `accept(boxes)` is the
    face policy: the boxes it returns are the answer, and an empty answer lets the detector
    search on (upsample, or its next stage). `FaceDetector` implements it for every registered
    detector."""

    kind: str
    landmarks: str | None
    last_first_pass: str | None

    def detect(self, rgb: np.ndarray, accept: Callable[[list[FaceBox]], list[FaceBox]] = ...,
               first_pass: bool = True) -> list[FaceBox]: ...

    def with_points(self, rgb: np.ndarray, boxes: list[FaceBox]) -> list[FaceBox]: ...


# ---------------------------------------------------------------- the registry

StageFactory = Callable[[], DetectorStage]


@dataclass(frozen=True)
class DetectorEntry:
    name: str
    stages: tuple[StageFactory, ...]  # tried in turn: a later one only where the earlier found no usable face
    files: tuple[str, ...] = ()  # catalogued files (resources.py file names) its stages load
    builtin: bool = False  # one of this package's files (the CLI's --detector choices)
    module: str = ""  # the module that registered it (orders the built-in ones)
    help: str = ""  # what `--help` says of it: when to choose it


_REGISTRY: dict[str, DetectorEntry] = {}
# The detector files that come first, in the order --help and messages have always listed their
# names (hog, cnn, hog+cnn, hog-fast); any other file of the package follows, in name order.
_FIRST_FILES = ("hog", "mmod", "hog_fast")
_builtins = "not loaded"  # "loading" while this package's detector files register themselves


def register_detector(name: str, stages: StageFactory | tuple[StageFactory, ...] | list[StageFactory],
                      files: tuple[str, ...] | list[str] = (), help: str = "") -> DetectorEntry:
    """Make `name` a detector: `stages` is a DetectorStage class (or a function returning a
    stage), or several tried in turn (a cascade such as hog+cnn); `files` names the catalogued
    files they load, so that they are verified before workers start; `help` is what `--help`
    says of it. ValueError when the name is taken."""
    module = sys._getframe(1).f_globals.get("__name__", "")
    builtin = module.startswith(__name__ + ".")
    if not builtin:  # a built-in file may be imported directly, before or while the others load
        _load_builtins()
    if not isinstance(name, str) or not name.strip() or name != name.strip() or "," in name:
        raise ValueError(f"a detector name is a non-empty word, not {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"detector {name!r} registered twice")
    stages = tuple(stages) if isinstance(stages, (tuple, list)) else (stages,)
    if not stages or not all(callable(s) for s in stages):
        raise ValueError(f"detector {name!r} needs one or more stage classes or factories")
    entry = DetectorEntry(name, stages, tuple(files), builtin=builtin, module=module, help=help)
    _REGISTRY[name] = entry
    return entry


def unregister_detector(name: str) -> None:
    """Forget a detector registered at run time (tests, plugins); the built-in ones stay."""
    _load_builtins()
    entry = _REGISTRY.get(name)
    if entry is None or entry.builtin:
        raise ValueError(f"{name!r} is not a detector registered at run time")
    del _REGISTRY[name]


def _load_builtins() -> None:
    """Import every detector file of this package once (each registers itself): adding one is
    adding a file. In a fixed order, so the CLI lists them the same way every time."""
    global _builtins
    if _builtins != "not loaded":
        return
    import importlib
    import pkgutil

    _builtins = "loading"
    try:
        found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
        for module in [m for m in _FIRST_FILES if m in found] + sorted(found - set(_FIRST_FILES)):
            importlib.import_module(f"{__name__}.{module}")
    finally:
        _builtins = "loaded"
    # Built-in files may have been imported directly first: list them in their files' order.
    rank = {f"{__name__}.{m}": i for i, m in enumerate(_FIRST_FILES)}
    entries = sorted(_REGISTRY.values(), key=lambda e: (not e.builtin, rank.get(e.module, len(rank)) if e.builtin
                                                         else 0, e.module if e.builtin else ""))
    _REGISTRY.clear()
    _REGISTRY.update((e.name, e) for e in entries)


def detector_help() -> str:
    """The `--detector` help of the built-in detectors, from their own files' words."""
    parts = [f"{e.name} ({e.help})" if e.help else e.name for e in map(detector_entry, detector_names(True))]
    return ", ".join(parts[:-1]) + (", or " if len(parts) > 1 else "") + parts[-1] + "."


def detector_names(builtin_only: bool = False) -> tuple[str, ...]:
    """Every registered detector (the built-in ones first, in their files' order)."""
    _load_builtins()
    return tuple(name for name, entry in _REGISTRY.items() if entry.builtin or not builtin_only)


def detector_entry(name) -> DetectorEntry:
    """The registry's record of `name` (an enum member of the CLI's is taken by its value);
    UsageError naming the choices when there is none."""
    _load_builtins()
    name = getattr(name, "value", name)
    if name not in _REGISTRY:
        raise UsageError(f"--detector must be one of {', '.join(_REGISTRY)}, not {name!r}.")
    return _REGISTRY[name]


def detector_files(name) -> tuple[str, ...]:
    return detector_entry(name).files


def smallest_face_px(name, height: int, width: int, upsample: int | str = 0, pixel_budget: int | None = None,
                     upsample_budget: int | None = None, min_face: int | None = None) -> int:
    """About the narrowest face (pixels of a `height` x `width` photo) that detector `name` finds
    with these settings: its stages' reach at the highest upsampling level the budgets allow,
    in the photo's pixels (a photo over the pixel budget is searched downscaled), or `min_face`
    where that is larger or the stage starts its search there. From the stages' class
    attributes: no model is loaded."""
    best = None
    for stage in detector_entry(name).stages:
        plan = detection_plan(height, width, parse_upsample(upsample),
                              upsample_budget or getattr(stage, "upsample_budget", UPSAMPLE_BUDGET["cnn"]),
                              pixel_budget or getattr(stage, "pixel_budget", PIXEL_BUDGET["cnn"]))
        reach = getattr(stage, "reach", DetectorStage.reach) / 2 ** max(plan.levels) / plan.scale
        if min_face is not None:
            reach = min_face if getattr(stage, "searches_from_min_face", False) else max(reach, min_face)
        best = reach if best is None else min(best, reach)
    return int(-(-best // 1))


def create_detector(name, **options) -> "FaceDetector":
    """A ready detector: `options` are FaceDetector's (upsample, upsample_budget, pixel_budget,
    first_pass_pixels, min_face)."""
    return FaceDetector(name, **options)


# ---------------------------------------------------------------- the runner


class FaceDetector:
    """Find faces in an RGB uint8 image with a registered detector. Load once per process; call
    per image.

    `upsample_budget` / `pixel_budget` override the per-stage budgets (pixels). `min_face`: the
    narrowest face (pixels of the photo) to report; narrower boxes are dropped, whatever the
    detector, and a detector with an image pyramid (mtcnn) looks no smaller (None: its default)."""

    def __init__(self, kind: str = DEFAULT_DETECTOR, upsample: int | str = 1, upsample_budget: int | None = None,
                 pixel_budget: int | None = None, first_pass_pixels: int | None = None,
                 min_face: int | None = None):
        if min_face is not None and (isinstance(min_face, bool) or not str(min_face).isdigit() or int(min_face) < 1):
            raise UsageError(f"--min-face must be a width in pixels of 1 or more, not {min_face!r}.")
        self.min_face = None if min_face is None else int(min_face)
        entry = detector_entry(kind)
        self.kind = entry.name
        self.upsample = parse_upsample(upsample)
        self.first_pass_pixels = FIRST_PASS_PIXELS if first_pass_pixels is None else int(first_pass_pixels)
        self.last_first_pass: str | None = None  # "kept", "searched again" or None: what detect() did
        self._stages: dict[str, DetectorStage] = {}
        for make in entry.stages:
            stage = make()
            if not stage.name or stage.name in self._stages:
                raise ValueError(f"detector {entry.name!r}: each stage needs its own name, not {stage.name!r}")
            self._stages[stage.name] = stage
        self._budgets = {name: (upsample_budget or stage.upsample_budget, pixel_budget or stage.pixel_budget)
                         for name, stage in self._stages.items()}

    @property
    def stages(self) -> tuple[str, ...]:
        """Stages to try in turn; a later one runs only when the earlier found no usable face."""
        return tuple(self._stages)

    @property
    def landmarks(self) -> str | None:
        """The landmark scheme of the boxes' points when every stage that gives points uses the
        same one (boxes without points: None per box), else None."""
        schemes = {s.landmarks for s in self._stages.values() if s.landmarks}
        return schemes.pop() if len(schemes) == 1 else None

    @property
    def first_pass_stage(self) -> str | None:
        """The stage big photos' downscaled first pass runs (the first that takes part), or None."""
        return next((name for name, s in self._stages.items() if s.first_pass_min_box is not None), None)

    def plan(self, stage: str, height: int, width: int) -> DetectionPlan:
        upsample_budget, pixel_budget = self._budgets[stage]
        return detection_plan(height, width, self.upsample, upsample_budget, pixel_budget)

    def first_pass_scale(self, stage: str, height: int, width: int) -> float | None:
        """The scale of the downscaled first pass for a photo this big, or None (no first pass):
        a stage that takes part (HOG) under upsample "auto", photos over twice FIRST_PASS_PIXELS
        (below, it saves little)."""
        if stage not in self._stages or self._stages[stage].first_pass_min_box is None:
            return None
        if self.upsample != AUTO_UPSAMPLE or self.first_pass_pixels <= 0:
            return None
        if height * width <= 2 * self.first_pass_pixels:
            return None
        return (self.first_pass_pixels / (height * width)) ** 0.5

    def first_pass(self, small: np.ndarray, height: int, width: int, accept=lambda boxes: boxes,
                   stage: str | None = None) -> list[FaceBox]:
        """The downscaled first pass on `small`, a copy of a `height` x `width` photo: the boxes
        (in the photo's coordinates) that `accept` chooses when the rule of the module doc keeps
        them, else [] (then the photo needs the plain search). Sets `last_first_pass`."""
        stage = stage or self.first_pass_stage
        self.last_first_pass = "searched again"
        fx, fy = width / small.shape[1], height / small.shape[0]
        # As at every level of the plain search, a narrow stage's frontal filter first (on a
        # 2 Mpx copy: about 90 ms instead of 180 here), all filters where its faces fail the rule.
        for frontal in ((True, False) if self._stages[stage].narrow else (False,)):
            boxes = self._detect_at(small, stage, 0, frontal=frontal)
            if boxes and min(min(b.width, b.height) for b in boxes) >= self._stages[stage].first_pass_min_box:
                chosen = accept([b.scaled(fx, fy) for b in boxes
                                 if self.min_face is None or b.width * fx >= self.min_face])
                if chosen:
                    self.last_first_pass = "kept"
                    return chosen
        return []

    def with_points(self, rgb: np.ndarray, boxes: list[FaceBox]) -> list[FaceBox]:
        """The chosen `boxes` with their landmarks from a stage that gives them on demand (others
        came with their points, or have none)."""
        stage = next((s for s in self._stages.values() if s.points_on_demand), None)
        return stage.points_for(rgb, boxes) if stage is not None and boxes else boxes

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
                chosen = self.first_pass(_fast_downscale(rgb, scale), height, width, accept, stage)
                if chosen:
                    return chosen
            plan = self.plan(stage, height, width)
            if self.min_face is not None:  # in the pixels of the image the stage searches
                self._stages[stage].min_face = self.min_face * plan.scale
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
        """One level of one stage: (whether any face was found, the faces `accept` chose). A
        stage with a narrow search (hog-fast: the frontal filter) tries it first, the full one
        only where it finds no face the policy accepts."""
        filters = ("frontal", "all") if self._stages[stage].narrow else ("all",)
        for which in filters:
            boxes = self._detect_at(image, stage, level, frontal=which == "frontal")
            if scale is not None:
                boxes = [b.scaled(*scale) for b in boxes]
            if self.min_face is not None:
                boxes = [b for b in boxes if b.width >= self.min_face]
            if boxes:
                chosen = accept(boxes)
                if chosen or which == "all":
                    return True, chosen
        return False, []

    def _detect_at(self, rgb: np.ndarray, kind: str, upsample: int, frontal: bool = False) -> list[FaceBox]:
        stage = self._stages[kind]
        return stage.find_narrow(rgb, upsample) if frontal else stage.find(rgb, upsample)


def _downscale(rgb: np.ndarray, scale: float) -> np.ndarray:
    import cv2
    import numpy as np

    height, width = rgb.shape[:2]
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


def _fast_downscale(rgb: np.ndarray, scale: float) -> np.ndarray:
    """`rgb` resized by `scale` (< 1) for a detection pass: exact halvings by pixel averaging
    (OpenCV's fast path), then bilinear for the rest (at most 2x). INTER_AREA straight to an
    arbitrary size costs 130 ms on a 12 Mpx photo here, this 8-25 ms; HOG finds the same faces."""
    import cv2
    import numpy as np

    height, width = rgb.shape[:2]
    target = (max(1, int(width * scale)), max(1, int(height * scale)))
    image = rgb
    while image.shape[1] // 2 >= target[0] and image.shape[0] // 2 >= target[1]:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) != target:
        image = cv2.resize(image, target, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)


# Names that live in the detector files, importable from here as before (and loaded on first use).
_FROM_FILES = {
    "_hog_model": "hog", "HogStage": "hog",
    "_frontal_model": "hog_fast", "frontal_sub_detector": "hog_fast", "hog_filter_spans": "hog_fast",
    "HOG_FILTERS": "hog_fast", "HOG_FILTER_WEIGHTS": "hog_fast", "HogFastStage": "hog_fast",
    "_cnn_model": "mmod", "MmodStage": "mmod",
}


def __getattr__(name: str):
    if name == "DETECTORS":  # the built-in detectors' names (the CLI's --detector choices)
        return detector_names(builtin_only=True)
    if name in _FROM_FILES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_FROM_FILES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
