"""What each lever of the default pipeline does to LFW View 1 accuracy (dlib-resnet.v1).

    python benchmarks/lfw_levers.py [--workers 2] [--out work/levers]

Aligns the 4,992 images of View 1 (pairsDevTrain + pairsDevTest) once per alignment variant,
embeds them with our PyTorch port of dlib's ResNet, chooses the threshold on pairsDevTrain
and reports accuracy on pairsDevTest, plus how many images had no face. Then, on the best
alignment, compares raw vectors, unit-normalised vectors, mean-centred vectors and the flip
average. Prints one table; everything is measured in this run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import DATA, make_tree

from facenet_cli.align_specs import get_spec
from facenet_cli.catalogue import get_record
from facenet_cli.embed import Embedder, normalise
from facenet_cli.images import read_rgb
from facenet_cli.jobs import AlignJob, align_tree
from facenet_cli.lfw import evaluate_distances, pair_distances, read_pairs
from facenet_cli.reps import Reps

LFW = DATA / "lfw"
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


def view1_images() -> list[Path]:
    keys = set()
    for name in ("pairsDevTrain.txt", "pairsDevTest.txt"):
        pairs = read_pairs(LFW / name)
        for n, i in zip(pairs.name1 + pairs.name2, np.concatenate([pairs.idx1, pairs.idx2])):
            keys.add((n, int(i)))
    return [LFW / "deepfunneled" / n / f"{n}_{i:04d}.jpg" for n, i in sorted(keys)]


def embed_tree(aligned: Path, embedder: Embedder) -> tuple[list[str], np.ndarray]:
    paths = sorted(str(p) for p in aligned.rglob("*.png"))
    chunks = []
    for start in range(0, len(paths), 64):
        chunks.append(embedder.embed([read_rgb(p) for p in paths[start:start + 64]], raw=True))
    return paths, np.concatenate(chunks)


def view1(paths: list[str], vectors: np.ndarray) -> tuple[float, float, float]:
    """Threshold from pairsDevTrain, accuracy on pairsDevTest; a pair missing a face is wrong."""
    reps = Reps(paths=paths, labels=np.zeros(len(paths), int), embeddings=vectors)
    everyone = {p.name for p in (LFW / "deepfunneled").iterdir()}
    train = pair_distances(read_pairs(LFW / "pairsDevTrain.txt"), reps, processed=everyone)
    test_pairs = read_pairs(LFW / "pairsDevTest.txt")
    result = evaluate_distances(pair_distances(test_pairs, reps, processed=everyone), test_pairs.fold, train)
    return result.accuracy_mean, result.auc, result.folds[0].threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("work/levers"))
    args = parser.parse_args()
    raw = make_tree(view1_images(), args.out / "raw")
    record = get_record("dlib-resnet.v1")
    plain = Embedder(record, device="cpu", batch_size=64)
    rows = []
    for i, (label, job) in enumerate(VARIANTS):
        aligned = args.out / f"aligned{i}"
        t = time.perf_counter()
        report = align_tree(raw, aligned, job, workers=args.workers)
        align_s = time.perf_counter() - t
        paths, vectors = embed_tree(aligned, plain)
        acc, auc, thr = view1(paths, normalise(vectors))
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
    train_keys = {k for pair in zip(*read_pairs(LFW / "pairsDevTrain.txt").keys()) for k in pair}
    from facenet_cli.lfw import path_key

    center = vectors[[path_key(p) in train_keys for p in paths]].mean(axis=0)
    np.save(args.out / "dev_train_mean.npy", center)
    unit = normalise(vectors)
    centred = normalise(vectors, center)
    scores = {
        "raw dlib vectors (L2)": view1(paths, vectors),
        "unit-normalised (squared L2)": view1(paths, unit),
        "mean-centred, then unit-normalised": view1(paths, centred),
        "unit-normalised + flip average": view1(paths, normalise(flip_vectors)),
        "mean-centred + flip average": view1(paths, normalise(flip_vectors, center)),
    }
    cos_unit = (unit[:200] @ unit[200:400].T).mean()
    cos_centred = (centred[:200] @ centred[200:400].T).mean()

    print("\nLFW View 1 (threshold from pairsDevTrain, accuracy on pairsDevTest's 1,000 pairs), dlib-resnet.v1")
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
