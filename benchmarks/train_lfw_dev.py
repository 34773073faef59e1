"""Train nn4.small2 on LFW's View 1 training people and measure it on View 1's test pairs.

    python benchmarks/train_lfw_dev.py prepare          # align the data (96 px, outerEyesAndNose)
    python benchmarks/train_lfw_dev.py teacher          # dlib-resnet.v1 reps of the same images
    python benchmarks/train_lfw_dev.py random           # untrained network: View 1 accuracy
    python benchmarks/train_lfw_dev.py triplet --minutes 10
    python benchmarks/train_lfw_dev.py distill --minutes 25 --distill-images 60 --triplet-weight 0 --name distill-all
    python benchmarks/train_lfw_dev.py table            # the table of every run so far

Run the steps in this order: each uses what the ones before wrote. Everything lands in
work/train-dev/ (ignored by git). Training people are those of peopleDevTrain.txt; they never
appear in pairsDevTest.txt, whose images are aligned separately. Accuracy is View 1 proper:
threshold chosen on pairsDevTrain.txt, accuracy on pairsDevTest.txt (`facenet lfw-roc ...
--train-pairs`). Every step prints the exact `facenet` commands it runs (in this process,
through the command-line parser) and the run steps end with the table.

`teacher` aligns the training images with dlib-resnet.v1's own 5-point chip (`--faces center
--fallback center`, as for all of LFW) and represents them into work/train-dev/teacher-reps,
where `distill` looks by default (`--teacher DIR` names another `facenet represent` folder;
`--chips DIR` reuses dlib chips aligned before, e.g. of all of LFW).

Several steps may be given at once (`prepare teacher random`): they run in that order in one
process. `--quick`: the same steps on 8 training people (4 images each) and 10 matched + 10
mismatched pairs of each View 1 file, one short epoch, in work/train-dev-quick (`--work` moves it).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LFW, QUICK_HELP, ROOT, link, need_lfw, pairs_subset, run_facenet_here, spread  # noqa: E402

# 10 pairs of each kind: the per-epoch check cross-validates over 10 folds, one of each per fold.
QUICK_PEOPLE, QUICK_IMAGES, QUICK_PAIRS = 8, 4, 10
RUNS = ("random", "triplet", "distill")


def run(args: list) -> float:
    """Run one facenet command (echoed); returns its wall time."""
    started = time.perf_counter()
    run_facenet_here(args)
    seconds = time.perf_counter() - started
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds


def train_people() -> list[str]:
    lines = (LFW / "peopleDevTrain.txt").read_text().split("\n")[1:]
    return [line.split()[0] for line in lines if line.strip()]


def pair_images(pairs_file: Path) -> set[tuple[str, int]]:
    rows = [line.split() for line in pairs_file.read_text().split("\n")[1:] if line.strip()]
    images = set()
    for r in rows:
        if len(r) == 3:
            images |= {(r[0], int(r[1])), (r[0], int(r[2]))}
        else:
            images |= {(r[0], int(r[1])), (r[2], int(r[3]))}
    return images


def view1_files(work: Path, quick: bool) -> tuple[Path, Path]:
    """(pairsDevTrain, pairsDevTest): LFW's own, or the subsets `prepare --quick` wrote."""
    if quick:
        return work / "pairsDevTrain-quick.txt", work / "pairsDevTest-quick.txt"
    return LFW / "pairsDevTrain.txt", LFW / "pairsDevTest.txt"


def prepare(args) -> None:
    images = need_lfw()
    work = args.work
    raw_train, raw_val = work / "raw-train", work / "raw-val"
    people = [(p, sorted((images / p).glob("*.jpg"))) for p in train_people()]
    if args.quick:
        people = spread([(p, files[:QUICK_IMAGES]) for p, files in people if len(files) >= QUICK_IMAGES], QUICK_PEOPLE)
        for name in ("pairsDevTrain.txt", "pairsDevTest.txt"):
            pairs_subset(LFW / name, work / name.replace(".txt", "-quick.txt"), QUICK_PAIRS)
    for _, files in people:
        for f in files:
            link(f, raw_train / f.parent.name / f.name)
    # Both View 1 pair files: the threshold comes from DevTrain's pairs, accuracy from DevTest's.
    for pairs_file in view1_files(work, args.quick):
        for person, number in pair_images(pairs_file):
            f = images / person / f"{person}_{number:04d}.jpg"
            link(f, raw_val / person / f.name)
    common = ["--landmarks", "outerEyesAndNose", "--size", "96", "--fallback", "center", "--workers", args.workers]
    run(["align", raw_train, work / "aligned-train", *common])
    run(["align", raw_val, work / "aligned-val", *common])


def teacher(args) -> None:
    work = args.work
    if not (work / "raw-train").is_dir():
        raise SystemExit(f"{work / 'raw-train'} is missing; run `train_lfw_dev.py prepare` first.")
    if args.chips:
        # Reuse dlib chips aligned before (e.g. of all of LFW): link the training people's.
        chips, subset = Path(args.chips), work / "chips-train"
        for person in sorted(p.name for p in (work / "raw-train").iterdir() if p.is_dir()):
            for f in sorted((chips / person).glob("*.png")) if (chips / person).is_dir() else []:
                link(f, subset / person / f.name)
        shutil.copy(chips / "align-spec.json", subset / "align-spec.json")
    else:
        subset = work / "chips-train"
        run(["align", work / "raw-train", subset, "--model", "dlib-resnet.v1", "--faces", "center",
             "--fallback", "center", "--workers", args.workers])
    run(["represent", subset, work / "teacher-reps", "--model", "dlib-resnet.v1", "--device", "cpu"])


def evaluate(args, checkpoint: Path, name: str) -> None:
    work = args.work
    dev_train, dev_test = view1_files(work, args.quick)
    reps = work / f"reps-{name}"
    run(["represent", work / "aligned-val", reps, "--model", checkpoint, "--device", "cpu"])
    run(["lfw-roc", reps, dev_test, work / f"lfw-{name}", "--train-pairs", dev_train])


def train(args, name: str, extra: list) -> None:
    work = args.work
    if not (work / "aligned-train").is_dir():
        raise SystemExit(f"{work / 'aligned-train'} is missing; run `train_lfw_dev.py prepare` first.")
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    dev_train, dev_test = view1_files(work, args.quick)
    command = ["train", work / "aligned-train", out, "--arch", "nn4.small2",
               "--people-per-batch", args.people, "--images-per-person", args.images,
               "--batches-per-epoch", args.batches, "--epochs", args.epochs, "--lr", args.lr,
               "--minutes", args.minutes, "--seed", "0", "--device", "cpu",
               # Per-epoch check: 10-fold cross-validation on pairsDevTest's 1549 images (cheap);
               # the reported figure is View 1 proper, by lfw-roc in evaluate().
               "--val-pairs", dev_test, "--val-aligned", work / "aligned-val", *extra]
    run(command)
    evaluate(args, out / "last.pt", name)


def table(work: Path) -> None:
    """One row per run in the work folder: training done, speed, View 1 accuracy and AUC."""
    print(f"\nnn4.small2 on LFW View 1 (threshold from pairsDevTrain, accuracy on pairsDevTest), {work}")
    print(f"{'run':<20} {'epochs':>6} {'train s':>8} {'images/s':>9} {'View 1 accuracy':>16} {'AUC':>7}")
    found = sorted(p.parent.name for p in work.glob("*/last.pt"))
    for name in sorted(found, key=lambda n: (n not in RUNS, RUNS.index(n) if n in RUNS else 0, n)):
        result_file = work / f"lfw-{name}" / "result.json"
        if not result_file.exists():
            continue
        result = json.loads(result_file.read_text())
        rows = []
        if (work / name / "loss.csv").exists():  # none for the untrained network
            with open(work / name / "loss.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
        seconds = sum(float(r["seconds"]) for r in rows)
        rates = [float(r["images_per_s"]) for r in rows]
        rate = f"{min(rates):.0f}-{max(rates):.0f}" if rates else ""
        print(f"{name:<20} {len(rows):>6} {seconds:>8.0f} {rate:>9} {result['accuracy_mean']:>16.4f} {result['auc']:>7.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="+", metavar="step", choices=["prepare", "teacher", *RUNS, "table"],
                        help="prepare, teacher, random, triplet, distill or table; several run in the order given")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--work", type=Path, help="work folder (default work/train-dev, with --quick work/train-dev-quick)")
    parser.add_argument("--workers", default="2", help="align processes")
    parser.add_argument("--chips", help="teacher: reuse this folder of dlib-chip aligned LFW images instead of aligning")
    parser.add_argument("--teacher", type=Path,
                        help="teacher reps for distill (default WORK/teacher-reps, written by the teacher step): "
                        "`facenet represent` of dlib chips; rows are matched to training images by <person>/<image>")
    parser.add_argument("--minutes", default="10", help="wall-clock training budget")
    parser.add_argument("--name", help="WORK sub-folder of the run (default: the step's name)")
    parser.add_argument("--epochs", default="1000", help="upper bound; --minutes usually stops first")
    parser.add_argument("--people", default="30", help="P, people per batch")
    parser.add_argument("--images", default="4", help="K, images per person in a batch")
    parser.add_argument("--batches", default="30", help="batches per epoch")
    parser.add_argument("--lr", default="0.001")
    parser.add_argument("--distill-images", default="0", help="distill: extra teacher-only images per batch")
    parser.add_argument("--triplet-weight", default="1.0", help="distill: weight of the triplet term")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.name and sum(step in RUNS for step in args.steps) > 1:
        parser.error("--name names one run; give one of random, triplet, distill with it.")
    args.work = (args.work or ROOT / "work" / ("train-dev-quick" if args.quick else "train-dev")).resolve()
    if args.quick:
        # A handful of batches of 4 people x 4 images; a few extra teacher-only images.
        args.people, args.images, args.batches, args.epochs = str(QUICK_PEOPLE // 2), str(QUICK_IMAGES), "2", "1"
        args.distill_images = str(min(int(args.distill_images), 4))
        args.workers = "1"
    # One torch thread unless told otherwise: on two busy shared cores, two OpenMP threads spin
    # against each other (measured 33-40 img/s with one thread, 6-23 with two, training nn4.small2).
    # Set before the first command imports torch, which runs in this process.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}", flush=True)
    for step in args.steps:
        run_step(args, step)
    if any(step in (*RUNS, "table") for step in args.steps):
        table(args.work)


def run_step(args, step: str) -> None:
    if step == "prepare":
        prepare(args)
    elif step == "teacher":
        teacher(args)
    elif step == "random":
        out = args.work / "random"
        shutil.rmtree(out, ignore_errors=True)
        # --epochs 0 writes the untrained network as a checkpoint.
        run(["train", args.work / "aligned-train", out, "--arch", "nn4.small2", "--epochs", "0",
             "--people-per-batch", args.people, "--images-per-person", args.images, "--seed", "0", "--device", "cpu"])
        evaluate(args, out / "last.pt", "random")
    elif step == "triplet":
        train(args, args.name or "triplet", [])
    elif step == "distill":
        teacher_reps = args.teacher or args.work / "teacher-reps"
        if not (teacher_reps / "labels.csv").exists():
            raise SystemExit(f"No teacher reps at {teacher_reps}; run `train_lfw_dev.py teacher` first "
                             "(or give --teacher DIR).")
        train(args, args.name or "distill", ["--teacher-reps", teacher_reps, "--distill-weight", "1.0",
                                             "--distill-images", args.distill_images,
                                             "--triplet-weight", args.triplet_weight])


if __name__ == "__main__":
    main()
