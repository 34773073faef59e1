"""The face detectors side by side: recall and speed on LFW photos and on group photos of small
faces, then photos to embeddings end to end with each.

    python benchmarks/detectors.py [--photos 300] [--groups 10] [--e2e 200] [--detectors hog,hog-fast,cnn,mtcnn] [--quick]

- LFW: `--photos` deep-funneled photos (`lfw_sample`), each detector through the registry
  (`FaceDetector(name, upsample="auto")`, what `facenet align` runs): found = a box covering the
  photo's centre (LFW's labelled person), missed = none; other boxes = boxes elsewhere
  (bystanders, which LFW photos often show, or false boxes: LFW has no labels to tell).
- Groups: `--groups` photos of 1280x960, each twelve LFW people composed as
  benchmarks/group_photo.py does (soft ellipses over a noisy background, people picked with one
  HOG face each), scaled so that dlib's HOG box of each face is 24 to 72 px wide (seed = photo
  number): found / missed / false boxes, a found box being one whose centre lies within half a
  placed face's width of it (group_photo.match_by_position).
- Speed: detection alone (the decoded RGB image in, boxes out), one thread (torch, OpenCV),
  median milliseconds per photo on this CPU; models loaded before timing.
- Either side: every LFW photo and every placed group face that one detector finds and another
  misses is counted against the first detector of `--detectors` (both / only one / only the
  other), with the LFW photos named, so no difference hides in the totals.
- End to end (`--e2e` LFW photos, 0: skip): what `facenet represent RAW OUT --photos --workers 2`
  runs (benchmarks/end_to_end.py's `run_ours`, a fresh process per detector), seconds from model
  load to the last embedding, photos per second, faces and misses.
`--quick`: 12 photos, one group, 8 photos end to end: same steps, same table, figures not quotable.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUP = {"width": 1280, "height": 960, "rows": 3, "per_row": 4, "box": (24, 72)}


def detect_all(name: str, images: list) -> tuple[list[list], list[float]]:
    """Boxes (l, t, r, b) per image and milliseconds per image, one thread, model loaded first."""
    from facenet_cli.detect import FaceDetector

    detector = FaceDetector(name, upsample="auto")
    detector.detect(images[0])  # warm-up: first calls of a network allocate its buffers
    boxes, times = [], []
    for rgb in images:
        started = time.perf_counter()
        found = detector.detect(rgb)
        times.append((time.perf_counter() - started) * 1000)
        boxes.append([(b.left, b.top, b.right, b.bottom) for b in found])
    return boxes, times


def centre_found(boxes: list[list], images: list) -> list[bool]:
    """Per LFW photo: whether a box covers its centre (the labelled person)."""
    return [any(b[0] <= rgb.shape[1] / 2 <= b[2] and b[1] <= rgb.shape[0] / 2 <= b[3] for b in found_boxes)
            for found_boxes, rgb in zip(boxes, images)]


def either_side(reference: str, name: str, lfw: dict, groups: dict, photos: list) -> str:
    """One line: LFW photos and group faces found by both, by the reference only, by `name` only."""
    a, b = lfw[reference], lfw[name]
    only_ref = [photos[i] for i in range(len(a)) if a[i] and not b[i]]
    only_new = [photos[i] for i in range(len(a)) if b[i] and not a[i]]
    ga, gb = groups[reference], groups[name]
    g_both = sum(len(x & y) for x, y in zip(ga, gb))
    g_ref = sum(len(x - y) for x, y in zip(ga, gb))
    g_new = sum(len(y - x) for x, y in zip(ga, gb))

    def names(paths: list) -> str:
        shown = ", ".join(f"{p.parent.name}/{p.name}" for p in paths[:8])
        return f" ({shown}{', ...' if len(paths) > 8 else ''})" if paths else ""

    return (f"{name} vs {reference}: LFW found by either {sum(x or y for x, y in zip(a, b))}, both "
            f"{sum(x and y for x, y in zip(a, b))}, {reference} only {len(only_ref)}{names(only_ref)}, "
            f"{name} only {len(only_new)}{names(only_new)}, neither {sum(not (x or y) for x, y in zip(a, b))}; "
            f"group faces found by either {g_both + g_ref + g_new}, both {g_both}, {reference} only {g_ref}, "
            f"{name} only {g_new}")


def lfw_counts(boxes: list[list], images: list) -> tuple[int, int, int]:
    found = other = 0
    for found_boxes, rgb in zip(boxes, images):
        cx, cy = rgb.shape[1] / 2, rgb.shape[0] / 2
        centre = [b for b in found_boxes if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]]
        found += bool(centre)
        other += len(found_boxes) - min(len(centre), 1)
    return found, len(images) - found, other


def e2e_child(detector: str, raw: Path, out: Path) -> None:
    sys.path.insert(0, str(HERE))
    import end_to_end

    result = end_to_end.run_ours(raw, out, "fp32", detector)
    print("RESULT " + json.dumps({k: result[k] for k in ("seconds", "load", "images", "faces", "missed")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--e2e", type=int, default=200, help="LFW photos for the end-to-end timing (0: skip)")
    parser.add_argument("--detectors", default="hog,hog-fast,cnn,mtcnn")
    parser.add_argument("--quick", action="store_true",
                        help="12 photos, one group, 8 end to end: same steps, same table, figures not quotable")
    parser.add_argument("--e2e-child", nargs=3, metavar=("DETECTOR", "RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.e2e_child:
        e2e_child(args.e2e_child[0], Path(args.e2e_child[1]), Path(args.e2e_child[2]))
        return
    if args.quick:
        args.photos, args.groups, args.e2e = 12, 1, 8
    sys.path.insert(0, str(HERE))
    import cv2
    import torch

    from _common import lfw_sample, make_tree, shell_line
    from group_photo import build_group_photo, match_by_position, matched_faces

    from facenet_cli.images import read_rgb

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    print("$ python benchmarks/detectors.py " + shell_line(sys.argv[1:]), flush=True)
    photos = lfw_sample(args.photos)
    images = [read_rgb(p) for p in photos]
    groups = [build_group_photo(seed=seed, **GROUP) for seed in range(args.groups)]
    placed_total = sum(len(placed) for _, placed in groups)
    print(f"{len(images)} LFW photos (250x250); {len(groups)} group photos "
          f"({GROUP['width']}x{GROUP['height']}, {placed_total} faces {GROUP['box'][0]}-{GROUP['box'][1]} px wide)")
    print(f"{'detector':<10} | {'LFW found':>9} {'missed':>6} {'other':>6} {'ms/photo':>9} | "
          f"{'group found':>11} {'missed':>6} {'false':>6} {'ms/photo':>9}")
    lfw_found, group_found = {}, {}
    for name in names:
        boxes, times = detect_all(name, images)
        found, missed, other = lfw_counts(boxes, images)
        g_boxes, g_times = detect_all(name, [rgb for rgb, _ in groups]) if groups else ([], [0.0])
        g_found = sum(match_by_position(b, placed) for b, (_, placed) in zip(g_boxes, groups))
        lfw_found[name] = centre_found(boxes, images)
        group_found[name] = [matched_faces(b, placed) for b, (_, placed) in zip(g_boxes, groups)]
        assert sum(map(len, group_found[name])) == g_found and sum(lfw_found[name]) == found
        g_false = sum(len(b) for b in g_boxes) - g_found
        print(f"{name:<10} | {found:>9} {missed:>6} {other:>6} {statistics.median(times):>9.1f} | "
              f"{g_found:>11} {placed_total - g_found:>6} {g_false:>6} {statistics.median(g_times):>9.1f}",
              flush=True)
    for name in names[1:]:
        print(either_side(names[0], name, lfw_found, group_found, photos), flush=True)
    if args.e2e <= 0:
        return
    work = Path(tempfile.mkdtemp(prefix="facenet-detectors-"))
    raw = make_tree(lfw_sample(args.e2e), work / "raw")
    print(f"\nend to end, {args.e2e} LFW photos to embeddings (represent --photos --workers 2, dlib-resnet.v1 fp32)")
    print(f"{'detector':<10} {'seconds':>8} {'photos/s':>9} {'faces':>6} {'missed':>7}")
    for name in names:
        done = subprocess.run([sys.executable, __file__, "--e2e-child", name, str(raw), str(work / name)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
        result = json.loads([x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
        seconds = result["seconds"] - result["load"]
        print(f"{name:<10} {seconds:>8.2f} {result['images'] / seconds:>9.1f} {result['faces']:>6} "
              f"{result['missed']:>7}", flush=True)


if __name__ == "__main__":
    main()
