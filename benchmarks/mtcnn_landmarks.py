"""How to align MTCNN's faces for dlib's ResNet: its own five points, or dlib's 5-point predictor
on its box? Measured by LFW View 2 accuracy (dlib-resnet.v1) on the same faces.

    python benchmarks/mtcnn_landmarks.py [--folds 2] [--fit 400] [--quick]

MTCNN's points (eye centres, nose tip, mouth corners) are not the dlib-chip template's (eye
corners, nose base). Two ways, each on every face MTCNN finds (policy center-only, faces missed
by it: the centre-box fallback with the predictor, the same for both):
  predictor: dlib's 5-point predictor on MTCNN's box (as for every detector without dlib's points);
  points:    dlib's five points predicted from MTCNN's by a similarity transform: the mean dlib
             points in MTCNN's normalised frame, fitted here on `--fit` LFW faces of people
             outside the evaluated folds (HOG box + predictor as the target); detect/mtcnn.py
             holds the figures this fit printed (MTCNN_MEAN_SHAPE, DLIB_5_IN_MTCNN_FRAME), and
             this row is the library's own path: FaceAligner with --detector mtcnn.
HOG + predictor on the same pairs is the reference row. Accuracy: threshold chosen on the other
folds (cross-validated over the `--folds` first folds of pairs.txt), and at the model's threshold.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import LFW, LFW_IMAGES, QUICK_HELP  # noqa: E402


from facenet_cli.detect.mtcnn import similarity_transform as similarity  # noqa: E402


def apply(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ t[:, :2].T + t[:, 2]


def fit_mapping(mtcnn_points: list[np.ndarray], dlib_points: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean MTCNN shape, mean dlib shape in that frame): Procrustes-normalise each face's MTCNN
    points to the running mean shape, carry its dlib points along, average."""
    mean = mtcnn_points[0] - mtcnn_points[0].mean(0)
    for _ in range(5):
        mean = mean / np.sqrt((mean ** 2).sum())
        mean = np.mean([apply(similarity(p, mean), p) for p in mtcnn_points], axis=0)
    mean = mean / np.sqrt((mean ** 2).sum())
    target = np.mean([apply(similarity(p, mean), q) for p, q in zip(mtcnn_points, dlib_points)], axis=0)
    return mean, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--fit", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    args = parser.parse_args()
    import dlib
    import torch

    from facenet_cli.align.aligner import choose_faces, center_box, LandmarkPredictor
    from facenet_cli.align.specs import get_spec
    from facenet_cli.detect import FaceDetector
    from facenet_cli.pipeline.face_pipeline import make_aligner
    from facenet_cli.evaluate.lfw import read_pairs
    from facenet_cli.evaluate.verification import best_threshold, accuracy_at
    from facenet_cli.images import read_rgb
    from facenet_cli.models.catalogue import CATALOGUE, DEFAULT_MODEL
    from facenet_cli.nets.embedder import Embedder

    torch.set_num_threads(2)
    per_fold = 10 if args.quick else 300
    lines = [l for l in (LFW / "pairs.txt").read_text().splitlines()[1:] if l.strip()]
    pairs, fold_of = [], []
    for fold in range(args.folds):
        block = lines[fold * 600:(fold + 1) * 600]
        for line in block[:per_fold] + block[300:300 + per_fold]:
            f = line.split("\t")
            if len(f) == 3:
                pairs.append(((f[0], int(f[1])), (f[0], int(f[2])), True))
            else:
                pairs.append(((f[0], int(f[1])), (f[2], int(f[3])), False))
            fold_of.append(fold)
    key = lambda n, i: f"{n}/{n}_{i:04d}"  # noqa: E731
    images = sorted({key(*p[0]) for p in pairs} | {key(*p[1]) for p in pairs})
    people = {k.split("/")[0] for k in images}
    others = sorted(p for p in LFW_IMAGES.glob("*/*.jpg") if p.parent.name not in people)
    fit_files = others[:: max(1, len(others) // (40 if args.quick else args.fit))][: 40 if args.quick else args.fit]

    mtcnn = FaceDetector("mtcnn", upsample="auto")
    hog = FaceDetector("hog", upsample="auto")
    predictor = LandmarkPredictor(5)
    spec = get_spec("dlib-chip")

    def found(detector, rgb):
        h, w = rgb.shape[:2]
        return detector.detect(rgb, lambda boxes: choose_faces(boxes, "center-only", h, w))

    started = time.perf_counter()
    m_pts, d_pts = [], []
    for path in fit_files:
        rgb = read_rgb(path)
        m, h = found(mtcnn, rgb), found(hog, rgb)
        if m and h:
            m_pts.append(m[0].landmarks.astype(np.float64))
            d_pts.append(LandmarkPredictor.to_array(predictor.shape(rgb, h[0])).astype(np.float64))
    mean_m, mean_d = fit_mapping(m_pts, d_pts)
    print(f"fitted on {len(m_pts)} faces of people outside the folds ({time.perf_counter() - started:.0f} s)")
    print("MTCNN_MEAN =", np.round(mean_m, 5).tolist())
    print("DLIB_5_IN_MTCNN_FRAME =", np.round(mean_d, 5).tolist())

    embedder = Embedder(CATALOGUE[DEFAULT_MODEL], device="cpu")
    aligner = make_aligner(spec, "mtcnn", "auto", "center-only", "center")
    variants = {"hog + predictor": {}, "mtcnn + predictor": {}, "mtcnn points": {}}
    misses = {"hog": 0, "mtcnn": 0}
    for k in images:
        rgb = read_rgb(LFW_IMAGES / f"{k}.jpg")
        height, width = rgb.shape[:2]
        fallback = center_box(height, width)
        for name, det in (("hog", hog), ("mtcnn", mtcnn)):
            boxes = found(det, rgb)
            box = boxes[0] if boxes else fallback
            misses[name] += not boxes
            shape = predictor.shape(rgb, box)
            variants[f"{name} + predictor"][k] = dlib.get_face_chip(rgb, shape, size=spec.size, padding=spec.padding)
        variants["mtcnn points"][k] = aligner.align(rgb)[0].image
    print(f"{len(images)} images of {len(pairs)} pairs ({args.folds} folds); no face (centre fallback): "
          f"hog {misses['hog']}, mtcnn {misses['mtcnn']}")
    fold_of = np.array(fold_of)
    same = np.array([p[2] for p in pairs])
    threshold = CATALOGUE[DEFAULT_MODEL].threshold
    print(f"{'alignment':<20} {'accuracy (cv)':>14} {f'at {threshold}':>10}")
    for name, crops in variants.items():
        vectors = dict(zip(images, embedder.embed([crops[k] for k in images])))
        dist = np.array([((vectors[key(*a)] - vectors[key(*b)]) ** 2).sum() for a, b, _ in pairs])
        accs = []
        for fold in range(args.folds):
            train, test = fold_of != fold, fold_of == fold
            t = best_threshold(dist[train], same[train]) if args.folds > 1 else threshold
            accs.append(accuracy_at(t, dist[test], same[test]))
        print(f"{name:<20} {np.mean(accs):>14.4f} {accuracy_at(threshold, dist, same):>10.4f}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
