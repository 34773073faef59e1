"""Levers tried on the per-photo align work, each against the plain way on the same LFW photos.

    python benchmarks/align_levers.py [--images 500] [--repeats 3] [--quick]

One process, one thread, the photos decoded once up front; every variant is timed in turn on
all of them per repeat (medians over --repeats), so all see the same load.

- HOG detection at upsample 0 (what `--upsample auto` runs first on LFW's 250x250 photos):
  dlib's frontal detector with its five sub-detectors (the plain way), the frontal sub-detector
  alone (`detect.frontal_sub_detector`: dlib's serialized detector with one of its five filters;
  what `--detector hog-fast` tries first), the plain detector on a grayscale copy, and on copies downscaled to 0.9 and 0.8.
  For each: ms per photo, photos with a face, and photos whose boxes are not the plain way's
  (another count, or IoU under 0.9; boxes of the downscaled copies mapped back to the photo).
- The crop's PNG encoding (the `write` stage of align, 150x150 dlib chips): OpenCV's default
  (what align uses) against explicit zlib levels, strategies and filters: ms per crop, median KB.

`--quick`: 12 photos, one repeat.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import QUICK_HELP, lfw_sample  # noqa: E402


def boxes_of(detector, image, scale: float = 1.0) -> list[tuple[int, int, int, int]]:
    rects, _, _ = detector.run(image, 0, 0.0)
    return [(round(r.left() / scale), round(r.top() / scale), round(r.right() / scale), round(r.bottom() / scale))
            for r in rects]


SAME_BOX_IOU = 0.9  # a box mapped back from a downscaled copy is off by rounding, not a new box


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def same_boxes(mine: list, plain: list) -> bool:
    return len(mine) == len(plain) and all(iou(a, b) >= SAME_BOX_IOU for a, b in zip(sorted(mine), sorted(plain)))


def timed_rounds(variants: dict, repeats: int) -> dict[str, tuple[float, list]]:
    """Each variant's median seconds per call over all inputs and its outputs, timed in turn."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, list] = {}
    for function, inputs in variants.values():
        function(inputs[0])  # warm-up: the first call of each pays for its caches
    for _ in range(repeats):
        for name, (function, inputs) in variants.items():
            start = time.perf_counter()
            outputs[name] = [function(x) for x in inputs]
            times[name].append((time.perf_counter() - start) / len(inputs))
    return {name: (statistics.median(times[name]), outputs[name]) for name in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 12, 1
    import cv2
    import dlib
    import numpy as np

    from facenet_cli.models import resources
    from facenet_cli.detect import _hog_model, frontal_sub_detector

    cv2.setNumThreads(1)
    photos = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in lfw_sample(args.images)]
    plain = _hog_model()
    frontal = frontal_sub_detector(plain)  # what --detector hog-fast runs first
    grays = [cv2.cvtColor(p, cv2.COLOR_RGB2GRAY) for p in photos]
    smaller = {s: [cv2.resize(p, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) for p in photos] for s in (0.9, 0.8)}
    variants = {
        "all five sub-detectors (plain)": (lambda p: boxes_of(plain, p), photos),
        "frontal sub-detector alone": (lambda p: boxes_of(frontal, p), photos),
        "grayscale copy": (lambda p: boxes_of(plain, p), grays),
        "copy downscaled to 0.9": (lambda p: boxes_of(plain, p, 0.9), smaller[0.9]),
        "copy downscaled to 0.8": (lambda p: boxes_of(plain, p, 0.8), smaller[0.8]),
    }
    results = timed_rounds(variants, args.repeats)
    reference = results["all five sub-detectors (plain)"][1]
    print(f"HOG at upsample 0, {len(photos)} LFW photos (250x250), 1 thread, median of {args.repeats}")
    print(f"{'':32} {'ms/photo':>9} {'vs plain':>9} {'with a face':>12} {'other boxes':>12}")
    base = results["all five sub-detectors (plain)"][0]
    for name, (seconds, boxes) in results.items():
        other = sum(1 for a, b in zip(boxes, reference) if not same_boxes(a, b))
        print(f"{name:32} {seconds * 1e3:9.2f} {base / seconds:8.2f}x {sum(1 for b in boxes if b):12d} {other:12d}")
    print("other boxes: photos whose boxes are not the plain way's (another count, or a box overlapping "
          f"its counterpart by less than IoU {SAME_BOX_IOU})")

    predictor = dlib.shape_predictor(str(resources.dlib_model_path(resources.SHAPE_PREDICTOR_5)))
    chips = []
    for photo in photos:
        rects = plain(photo, 0)
        if rects:
            chips.append(cv2.cvtColor(dlib.get_face_chip(photo, predictor(photo, rects[0]), size=150, padding=0.25),
                                      cv2.COLOR_RGB2BGR))
    C, S, F = cv2.IMWRITE_PNG_COMPRESSION, cv2.IMWRITE_PNG_STRATEGY, getattr(cv2, "IMWRITE_PNG_FILTER", None)
    settings = {"OpenCV's default (align's)": [], "level 1, default strategy": [C, 1],
                "level 3, default strategy": [C, 3], "level 1, RLE": [C, 1, S, cv2.IMWRITE_PNG_STRATEGY_RLE]}
    if F is not None:  # OpenCV 4.11 and later
        settings["level 2, RLE, Paeth filter"] = [C, 2, S, cv2.IMWRITE_PNG_STRATEGY_RLE, F, cv2.IMWRITE_PNG_FILTER_PAETH]
    encoded = timed_rounds({name: (lambda c, p=params: cv2.imencode(".png", c, p)[1], chips)
                            for name, params in settings.items()}, args.repeats)
    default_s = encoded["OpenCV's default (align's)"][0]
    print(f"\nPNG encoding of {len(chips)} dlib chips (150x150), OpenCV {cv2.__version__}, median of {args.repeats}")
    print(f"{'':32} {'ms/crop':>9} {'vs default':>11} {'median KB':>10}")
    for name, (seconds, buffers) in encoded.items():
        size = statistics.median(len(b) for b in buffers) / 1024
        print(f"{name:32} {seconds * 1e3:9.2f} {default_s / seconds:10.2f}x {size:10.1f}")
        decoded = [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in buffers]
        assert all(np.array_equal(d, c) for d, c in zip(decoded, chips)), f"{name} is not lossless"


if __name__ == "__main__":
    main()
