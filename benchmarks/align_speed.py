"""Images/s of `facenet align` with 1 and 2 workers on the same LFW images, side by side.

    python benchmarks/align_speed.py [--images 1000] [--repeats 1] [--quick]

Prints images/s per worker count (median over repeats), the ratio, ms per stage and the
outcome counts (which add up to the number of images). `--quick`: 24 images, one repeat.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import QUICK_HELP, lfw_sample, make_tree, median

from facenet_cli.align.specs import get_spec
from facenet_cli.align.job import STAGES, AlignJob, align_tree


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--spec", default="dlib-chip")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.images, args.repeats = 24, 1

    work = Path(tempfile.mkdtemp(prefix="facenet-bench-"))
    raw = make_tree(lfw_sample(args.images), work / "raw")
    job = AlignJob(get_spec(args.spec))
    rates: dict[int, list[float]] = {1: [], 2: []}
    stages = {}
    for _ in range(args.repeats):
        for workers in (1, 2):  # interleaved, so drift in machine load hits both alike
            out = work / f"out{workers}"
            shutil.rmtree(out, ignore_errors=True)
            report = align_tree(raw, out, job, workers=workers)
            rates[workers].append(report.total / report.seconds)
            if workers == 1:
                stages = report.stage_ms()
    shutil.rmtree(work, ignore_errors=True)

    one, two = median(rates[1]), median(rates[2])
    print(f"facenet align, {args.images} LFW images, spec {args.spec}, detector hog upsample auto")
    print(f"{'workers':>8} {'images/s':>10}")
    print(f"{1:>8} {one:>10.1f}")
    print(f"{2:>8} {two:>10.1f}")
    print(f"ratio workers 2 / workers 1: {two / one:.2f}x (target >= 1.8x)")
    print("ms per image by stage (workers 1): " + ", ".join(f"{s} {stages[s]:.2f}" for s in STAGES))
    print(f"counts (workers 2): {report.counts}, total {report.total}")


if __name__ == "__main__":
    main()
