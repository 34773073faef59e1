"""The whole LFW View 2 benchmark, end to end, with the commands the README shows.

    python benchmarks/lfw_view2.py [--out work/lfw-view2] [--workers 2] [--flip] [--detector hog+cnn] [--fresh] [--quick]

Runs `facenet align` on all 13,233 deep-funneled LFW images (the default model's spec; only a
face covering the image centre counts, HOG first and dlib's CNN where HOG finds none, the
centre-box fallback for what is still missed), `facenet represent`, `facenet lfw-roc`, and
prints each command, its wall time, its peak memory and the results beside published figures.
`--quick`: the first 2 matched and 2 mismatched pairs of each of the 10 folds (40 pairs, about
80 images) into work/lfw-view2-quick, same commands, same table.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _common import LFW, QUICK_HELP, make_tree, pair_image_files, pairs_subset

PUBLISHED = [
    ("FaceNet (Schroff et al. 2015)", "0.9963 ± 0.0009", ""),
    ("dlib ResNet, dlib's own figure", "0.9938", ""),
    ("OpenFace nn4.small2.v1", "0.9292 ± 0.0134", "0.973"),
]


# Each step runs under a small parent that reports its children's peak RSS, so every step's
# peak memory is its own (align's worker processes do not mask represent's).
_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)")


def run(cmd: list[str]) -> tuple[float, float]:
    """Run one command; return (wall seconds, peak RSS in MB)."""
    print("$ facenet " + " ".join(shlex.quote(c) for c in cmd[3:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK, *cmd], stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step failed:\n{done.stderr[-3000:]}")
    peak_kb = float(done.stderr.strip().splitlines()[-1])
    return time.perf_counter() - started, peak_kb / 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="work folder (default work/lfw-view2, with --quick work/lfw-view2-quick)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--detector", default="hog+cnn", choices=("hog", "hog-fast", "hog-onet", "cnn", "hog+cnn", "mtcnn"),
                        help="align's --detector (default hog+cnn, the README pipeline)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier outputs first (else align resumes)")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    args.out = args.out or Path("work/lfw-view2-quick" if args.quick else "work/lfw-view2")
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    images, pairs = LFW / "deepfunneled", LFW / "pairs.txt"
    if args.quick:
        pairs = pairs_subset(pairs, args.out / "pairs-quick.txt", per_fold=2)
        images = make_tree(pair_image_files(pairs), args.out / "raw")
    facenet = [sys.executable, "-m", "facenet_cli"]
    aligned, reps, evaluation = args.out / "aligned", args.out / "reps", args.out / "eval"
    times = {
        "align": run(facenet + ["align", str(images), str(aligned), "--faces", "center-only",
                                "--detector", args.detector, "--fallback", "center", "--workers", str(args.workers)]),
        "represent": run(facenet + ["represent", str(aligned), str(reps)] + (["--flip"] if args.flip else [])),
        "lfw-roc": run(facenet + ["lfw-roc", str(reps), str(pairs), str(evaluation),
                                  "--comparisons", str(LFW / "comparisons")]),
    }
    with open(aligned / "align-report.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    counts = Counter(r["status"] for r in rows)
    fallbacks = [r for r in rows if r["status"] == "fallback"]
    result = json.loads((evaluation / "result.json").read_text())

    pair_count = result.get("pairs", 6000)
    print(f"\nLFW View 2 (10 folds, {pair_count:,} pairs), dlib-resnet.v1{' + flip' if args.flip else ''}, "
          f"--detector {args.detector}, this machine")
    print(f"images: {len(rows)}; aligned {counts['aligned']}, centre-box fallback {len(fallbacks)}, "
          f"no face {counts['no-face']}, unreadable {counts['unreadable']}, other {len(rows) - sum(counts[k] for k in ('aligned', 'fallback', 'no-face', 'unreadable'))}")
    for step, (seconds, peak_mb) in times.items():
        print(f"  {step:<10} {seconds:8.1f} s wall, peak RSS {peak_mb:6.0f} MB")
    print(f"{'':<34} {'accuracy':>18} {'AUC':>7} {'VAL@FAR=0.001':>16} {'EER':>7}")
    print(f"{'facenet (this run)':<34} {result['accuracy_mean']:.4f} ± {result['accuracy_std']:.4f}  "
          f"{result['auc']:.4f} {result['val_mean']:.4f} ± {result['val_std']:.4f} {result['eer']:.4f}")
    for name, acc, auc in PUBLISHED:
        print(f"{name:<34} {acc:>18} {auc:>7}")
    print(f"pairs with a missing embedding: {result['missing_pairs']}")


if __name__ == "__main__":
    main()
