"""What each lever of the default pipeline does to LFW View 1 accuracy (dlib-resnet.v1).

    python benchmarks/lfw_levers.py [--workers 2] [--out work/levers] [--quick]

Aligns the 4,992 images of View 1 (pairsDevTrain + pairsDevTest) once per alignment variant,
embeds them with our PyTorch port of dlib's ResNet, chooses the threshold on pairsDevTrain
and reports accuracy on pairsDevTest, plus how many images had no face. Then, on the best
alignment, compares raw vectors, unit-normalised vectors, mean-centred vectors and the flip
average. Prints one table; everything is measured in this run. `--quick`: the first 4 matched
and 4 mismatched pairs of each View 1 file (about 30 images), one worker, into work/levers-quick.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import LFW, QUICK_HELP, make_tree, pair_image_files, pairs_subset

from facenet_cli.align.specs import get_spec
from facenet_cli.models.catalogue import get_record
from facenet_cli.nets.embedder import Embedder, normalise
from facenet_cli.images import read_rgb
from facenet_cli.align.job import AlignJob, align_tree
from facenet_cli.evaluate.lfw import pair_distances, read_pairs
from facenet_cli.evaluate.verification import evaluate_distances
from facenet_cli.formats.reps import Reps

VARIANTS = [
    ("face_recognition's defaults: HOG upsample 1, largest face, 5-point chip",
     AlignJob(get_spec("dlib-chip"), upsample=1, faces="largest")),
    ("+ the face nearest the centre", AlignJob(get_spec("dlib-chip"), upsample=1, faces="center")),
    ("+ adaptive upsampling (0, then 1, then 2)", AlignJob(get_spec("dlib-chip"), upsample="auto", faces="center")),
    ("+ centre-box fallback for faces not found",
     AlignJob(get_spec("dlib-chip"), upsample="auto", faces="center", fallback="center")),
    ("+ dlib's CNN detector where HOG finds nothing",
     AlignJob(get_spec("dlib-chip"), detector="hog+cnn", upsample="auto", faces="center", fallback="center")),
    ("+ only a face covering the centre (else the next detector)",
     AlignJob(get_spec("dlib-chip"), detector="hog+cnn", upsample="auto", faces="center-only", fallback="center")),
    ("68-point chip instead of 5-point (with all of the above)",
     AlignJob(get_spec("dlib-chip68"), detector="hog+cnn", upsample="auto", faces="center-only", fallback="center")),
]
BEST = 5  # the alignment the embedding levers are measured on


def view1_images(train_pairs: Path, test_pairs: Path) -> list[Path]:
    return sorted(set(pair_image_files(train_pairs)) | set(pair_image_files(test_pairs)))


def embed_tree(aligned: Path, embedder: Embedder) -> tuple[list[str], np.ndarray]:
    paths = sorted(str(p) for p in aligned.rglob("*.png"))
    chunks = []
    for start in range(0, len(paths), 64):
        chunks.append(embedder.embed([read_rgb(p) for p in paths[start:start + 64]], raw=True))
    return paths, np.concatenate(chunks)


def view1(paths: list[str], vectors: np.ndarray, train_file: Path, test_file: Path) -> tuple[float, float, float]:
    """Threshold from pairsDevTrain, accuracy on pairsDevTest; a pair missing a face is wrong."""
    reps = Reps(paths=paths, labels=np.zeros(len(paths), int), embeddings=vectors)
    everyone = {p.name for p in (LFW / "deepfunneled").iterdir()}
    train = pair_distances(read_pairs(train_file), reps, processed=everyone)
    test_pairs = read_pairs(test_file)
    result = evaluate_distances(pair_distances(test_pairs, reps, processed=everyone), test_pairs.fold, train)
    return result.accuracy_mean, result.auc, result.folds[0].threshold


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="work folder (default work/levers, with --quick work/levers-quick)")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    args.out = args.out or Path("work/levers-quick" if args.quick else "work/levers")
    train_file, test_file = LFW / "pairsDevTrain.txt", LFW / "pairsDevTest.txt"
    if args.quick:
        args.workers = 1
        train_file = pairs_subset(train_file, args.out / "pairsDevTrain-quick.txt", per_fold=4)
        test_file = pairs_subset(test_file, args.out / "pairsDevTest-quick.txt", per_fold=4)
    raw = make_tree(view1_images(train_file, test_file), args.out / "raw")
    record = get_record("dlib-resnet.v1")
    plain = Embedder(record, device="cpu", batch_size=64)
    rows = []
    for i, (label, job) in enumerate(VARIANTS):
        aligned = args.out / f"aligned{i}"
        t = time.perf_counter()
        report = align_tree(raw, aligned, job, workers=args.workers)
        align_s = time.perf_counter() - t
        paths, vectors = embed_tree(aligned, plain)
        acc, auc, thr = view1(paths, normalise(vectors), train_file, test_file)
        # A rerun resumes: files aligned before say so in their detail ("was fallback").
        fallback = sum(o.status == "fallback" or o.detail == "was fallback" for o in report.outcomes)
        missed = report.counts["no-face"] + fallback
        rows.append((label, missed, fallback, acc, auc, thr, align_s))
        print(json.dumps(rows[-1]), flush=True)
    best = args.out / f"aligned{BEST}"
    paths, vectors = embed_tree(best, plain)
    flipped = Embedder(record, device="cpu", batch_size=64, flip=True)
    t = time.perf_counter()
    _, flip_vectors = embed_tree(best, flipped)
    flip_s = time.perf_counter() - t
    t = time.perf_counter()
    embed_tree(best, plain)
    plain_s = time.perf_counter() - t
    # The mean raw vector of the images of pairsDevTrain only: a dataset statistic of the
    # training side, never of the pairs the accuracy is measured on.
    train_keys = {k for pair in zip(*read_pairs(train_file).keys()) for k in pair}
    from facenet_cli.evaluate.lfw import path_key

    center = vectors[[path_key(p) in train_keys for p in paths]].mean(axis=0)
    np.save(args.out / "dev_train_mean.npy", center)
    unit = normalise(vectors)
    centred = normalise(vectors, center)
    scores = {
        "raw dlib vectors (L2)": view1(paths, vectors, train_file, test_file),
        "unit-normalised (squared L2)": view1(paths, unit, train_file, test_file),
        "mean-centred, then unit-normalised": view1(paths, centred, train_file, test_file),
        "unit-normalised + flip average": view1(paths, normalise(flip_vectors), train_file, test_file),
        "mean-centred + flip average": view1(paths, normalise(flip_vectors, center), train_file, test_file),
    }
    # Faces 0-199 against faces 200-399 (sorted by name: nearly all of them unrelated).
    n = min(200, len(paths) // 2)
    cos_unit = (unit[:n] @ unit[n:2 * n].T).mean()
    cos_centred = (centred[:n] @ centred[n:2 * n].T).mean()

    test_count = len(read_pairs(test_file).same)
    print(f"\nLFW View 1 (threshold from pairsDevTrain, accuracy on pairsDevTest's {test_count:,} pairs), dlib-resnet.v1")
    print(f"{'alignment':<72} {'no face':>7} {'fallback':>8} {'accuracy':>8} {'AUC':>7} {'align s':>7}")
    for label, missed, fallback, acc, auc, thr, secs in rows:
        print(f"{label:<72} {missed:>7} {fallback:>8} {acc:>8.4f} {auc:>7.4f} {secs:>7.0f}")
    print(f"\nOn alignment {BEST} ({VARIANTS[BEST][0]}):")
    print(f"{'embedding':<40} {'accuracy':>8} {'AUC':>7} {'threshold':>9}")
    for label, (acc, auc, thr) in scores.items():
        print(f"{label:<40} {acc:>8.4f} {auc:>7.4f} {thr:>9.4f}")
    print(f"mean cosine between unrelated faces: unit-normalised {cos_unit:.3f}, mean-centred {cos_centred:.3f}")
    print(f"embedding time for {len(paths)} faces: plain {plain_s:.1f} s, flip {flip_s:.1f} s ({flip_s / plain_s:.2f}x)")


if __name__ == "__main__":
    main()
