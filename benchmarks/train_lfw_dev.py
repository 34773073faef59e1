"""Train nn4.small2 on LFW's View 1 training people and measure it on View 1's test pairs.

    python benchmarks/train_lfw_dev.py prepare          # align the data (96 px, outerEyesAndNose)
    python benchmarks/train_lfw_dev.py teacher          # dlib-resnet.v1 reps of the same people
    python benchmarks/train_lfw_dev.py random           # untrained network: View 1 accuracy
    python benchmarks/train_lfw_dev.py triplet --minutes 10
    python benchmarks/train_lfw_dev.py distill --minutes 15
    python benchmarks/train_lfw_dev.py distill --minutes 25 --distill-images 60 --triplet-weight 0 --name distill-all

Everything lands in work/train-dev/ (ignored by git). Training people are those of
peopleDevTrain.txt; they never appear in pairsDevTest.txt, whose images are aligned separately.
Accuracy is View 1 proper: threshold chosen on pairsDevTrain.txt, accuracy on pairsDevTest.txt
(`facenet lfw-roc ... --train-pairs`). Every step prints the exact `facenet` commands it runs.
The teacher step needs dlib-chip aligned images of the training people: by default it takes
them from work/lfw-chip5 (a full-LFW `facenet align --faces center --fallback center` run);
--chips DIR names another.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, ROOT, need_lfw  # noqa: E402

LFW = DATA / "lfw"
WORK = ROOT / "work" / "train-dev"
FACENET = [sys.executable, "-m", "facenet_cli"]
# One torch thread per run: on two busy shared cores, two OpenMP threads spin against each
# other (measured 33-40 img/s with one thread, 6-23 with two, training nn4.small2).
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run(args: list[str]) -> float:
    """Run one facenet command, echoing it; returns its wall time."""
    print(f"$ OMP_NUM_THREADS={ENV['OMP_NUM_THREADS']} facenet " + " ".join(shlex.quote(str(a)) for a in args),
          flush=True)
    started = time.perf_counter()
    subprocess.run(FACENET + [str(a) for a in args], cwd=ROOT, check=True, env=ENV)
    seconds = time.perf_counter() - started
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds


def link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy(src, dest)


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


def prepare(args) -> None:
    images = need_lfw()
    raw_train, raw_val = WORK / "raw-train", WORK / "raw-val"
    for person in train_people():
        for f in sorted((images / person).glob("*.jpg")):
            link(f, raw_train / person / f.name)
    # Both View 1 pair files: the threshold comes from DevTrain's pairs, accuracy from DevTest's.
    for name in ("pairsDevTrain.txt", "pairsDevTest.txt"):
        for person, number in pair_images(LFW / name):
            f = images / person / f"{person}_{number:04d}.jpg"
            link(f, raw_val / person / f.name)
    common = ["--landmarks", "outerEyesAndNose", "--size", "96", "--fallback", "center", "--workers", args.workers]
    run(["align", raw_train, WORK / "aligned-train", *common])
    run(["align", raw_val, WORK / "aligned-val", *common])


def teacher(args) -> None:
    chips = Path(args.chips)
    subset = WORK / "chips-train"
    for person in train_people():
        for f in sorted((chips / person).glob("*.png")) if (chips / person).is_dir() else []:
            link(f, subset / person / f.name)
    shutil.copy(chips / "align-spec.json", subset / "align-spec.json")
    run(["represent", subset, WORK / "teacher-reps", "--model", "dlib-resnet.v1", "--device", "cpu"])


def evaluate(checkpoint: str, name: str) -> None:
    reps = WORK / f"reps-{name}"
    run(["represent", WORK / "aligned-val", reps, "--model", checkpoint, "--device", "cpu"])
    run(["lfw-roc", reps, LFW / "pairsDevTest.txt", "--train-pairs", LFW / "pairsDevTrain.txt",
         "--out", WORK / f"lfw-{name}"])


def train(args, name: str, extra: list[str]) -> None:
    out = WORK / name
    shutil.rmtree(out, ignore_errors=True)
    command = ["train", WORK / "aligned-train", "--model", "nn4.small2", "--out", out,
               "--people-per-batch", args.people, "--images-per-person", args.images,
               "--batches-per-epoch", args.batches, "--epochs", args.epochs, "--lr", args.lr,
               "--minutes", args.minutes, "--seed", "0", "--device", "cpu",
               # Per-epoch check: 10-fold cross-validation on pairsDevTest's 1549 images (cheap);
               # the reported figure is View 1 proper, by lfw-roc in evaluate().
               "--val-pairs", LFW / "pairsDevTest.txt", "--val-aligned", WORK / "aligned-val", *extra]
    run(command)
    evaluate(str(out / "last.pt"), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "teacher", "random", "triplet", "distill"])
    parser.add_argument("--workers", default="2")
    parser.add_argument("--chips", default=str(ROOT / "work" / "lfw-chip5"))
    parser.add_argument("--teacher", default=str(ROOT / "work" / "reps-chip5"),
                        help="teacher reps for distill: `facenet represent` of dlib chips (all LFW is fine; "
                        "rows are matched to training images by <person>/<image>)")
    parser.add_argument("--minutes", default="10", help="wall-clock training budget")
    parser.add_argument("--name", help="work/train-dev/ sub-folder of the run (default: the step's name)")
    parser.add_argument("--epochs", default="1000", help="upper bound; --minutes usually stops first")
    parser.add_argument("--people", default="30")
    parser.add_argument("--images", default="4")
    parser.add_argument("--batches", default="30")
    parser.add_argument("--lr", default="0.001")
    parser.add_argument("--distill-images", default="0", help="distill: extra teacher-only images per batch")
    parser.add_argument("--triplet-weight", default="1.0", help="distill: weight of the triplet term")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args)
    elif args.step == "teacher":
        teacher(args)
    elif args.step == "random":
        out = WORK / "random"
        shutil.rmtree(out, ignore_errors=True)
        # --epochs 0 writes the untrained network as a checkpoint.
        run(["train", WORK / "aligned-train", "--model", "nn4.small2", "--out", out, "--epochs", "0",
             "--people-per-batch", args.people, "--images-per-person", args.images, "--seed", "0"])
        evaluate(str(out / "last.pt"), "random")
    elif args.step == "triplet":
        train(args, args.name or "triplet", [])
    else:
        train(args, args.name or "distill", ["--teacher-reps", args.teacher, "--distill-weight", "1.0",
                                             "--distill-images", args.distill_images,
                                             "--triplet-weight", args.triplet_weight])


if __name__ == "__main__":
    main()
