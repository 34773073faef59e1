"""Enrolling photos in a gallery: faces embedded in batches against one at a time, side by side.

    python benchmarks/gallery_add.py [--images 300] [--repeats 3] [--quick]

`facenet gallery add GALLERY KNOWN/ --json` on `--images` LFW photos (a folder per person), into
a new gallery each run, with the default `--batch-size 32` (each batch embedded in one network
call and enrolled in one transaction) and with `--batch-size 1` (one face per network call and
per transaction: what `gallery add` did before batching). Each run is its own process, timed
from the shell (start-up included, as a user waits); the two settings alternate, and the figures
are medians over --repeats. Both must enrol the same faces: the script checks that each face's
embedding agrees between the two galleries (max difference printed). `--quick`: 12 images, one
repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import QUICK_HELP, lfw_sample, make_tree, median  # noqa: E402

SETTINGS = {"batched (--batch-size 32)": "32", "one at a time (--batch-size 1)": "1"}


def add(known: Path, gallery: Path, batch_size: str) -> tuple[float, dict]:
    command = [sys.executable, "-m", "facenet_cli", "gallery", "add", str(gallery), str(known), "--json",
               "--batch-size", batch_size]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"gallery add failed:\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def embeddings(gallery: Path) -> dict[str, bytes]:
    with sqlite3.connect(gallery) as db:
        return dict(db.execute("SELECT source, embedding FROM faces"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 12, 1
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="facenet-gallery-add-"))
    known = make_tree(lfw_sample(args.images), work / "known")
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    reports: dict[str, dict] = {}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        order = list(SETTINGS) if repeat % 2 == 0 else list(SETTINGS)[::-1]
        for name in order:
            gallery = work / f"{SETTINGS[name]}.gallery"
            for leftover in work.glob(f"{SETTINGS[name]}.gallery*"):
                leftover.unlink()
            seconds, reports[name] = add(known, gallery, SETTINGS[name])
            times[name].append(seconds)
            print(f"  repeat {repeat + 1} {name}: {seconds:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    batched, single = (embeddings(work / f"{size}.gallery") for size in SETTINGS.values())
    shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    print(f"\nfacenet gallery add, {args.images} LFW photos, a new gallery each run, median of {args.repeats}; "
          f"{os.cpu_count()} CPUs")
    print(f"load average (1 min): before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"{'':32} {'seconds':>8} {'photos/s':>9} {'added':>6}")
    for name in SETTINGS:
        seconds = median(times[name])
        print(f"{name:32} {seconds:8.1f} {args.images / seconds:9.2f} {reports[name]['counts']['added']:6d}")
    first, second = (median(times[name]) for name in SETTINGS)
    print(f"ratio batched / one at a time: {second / first:.2f}x faster")
    common = sorted(set(batched) & set(single))
    diff = max((float(np.abs(np.frombuffer(batched[k], "<f4") - np.frombuffer(single[k], "<f4")).max())
                for k in common), default=float("nan"))
    print(f"same faces enrolled: {len(common)} of {len(batched)} and {len(single)}; "
          f"largest embedding difference {diff:.2e}")


if __name__ == "__main__":
    main()
