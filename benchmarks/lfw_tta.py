"""LFW accuracy per cost of the embedding options: precision (fp32/bf16/int8), flip and
test-time augmentation (`--tta N` jittered copies), on crops aligned once.

    python benchmarks/lfw_tta.py --view 1 --variant fp32:flip --variant fp32:flip:tta4
    python benchmarks/lfw_tta.py --view 2 --variant int8:flip --threads 1
    python benchmarks/lfw_tta.py --quick
    python benchmarks/lfw_tta.py --view 2 --variant fp32:flip --variant bf16:flip --variant int8:flip --mixed

Each variant embeds only the aligned crops the protocol's pairs name (View 1: pairsDevTrain +
pairsDevTest, the threshold chosen on the first, accuracy on the second; View 2: pairs.txt, 10
folds), with `represent_tree` into work/lfw-speed/view<V>/<variant>/reps, then measures it with
`evaluate_lfw` as `facenet lfw-roc REPS PAIRS OUT [--train-pairs ...]` does (the command is printed).
A variant whose reps already exist is measured again without re-embedding (`--fresh` redoes it).
The crops default to work/lfw-all/aligned, the README's View 2 alignment of all 13,233 images.
`--mixed` also scores each variant against the first (every pair's first image from the first
variant: a gallery made in one precision and queried in another) at the model's fixed threshold.
`--quick` (10 + 10 pairs of each View 1 file, or 2 + 2 of each View 2 fold) aligns the images its
pairs name itself, with that same `facenet align`, into WORK/view<V>-quick/aligned, a folder it
empties first (seconds of work; nothing from an earlier run, of another size, is reused).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--view", type=int, choices=(1, 2), default=1)
    parser.add_argument("--variant", action="append", default=[],
                        help="PRECISION[:flip][:ttaN], e.g. fp32:flip:tta4 (repeatable; default fp32:flip)")
    parser.add_argument("--aligned", type=Path, default=HERE.parent / "work" / "lfw-all" / "aligned",
                        help="aligned crops of all LFW images (not read by --quick, which aligns its own)")
    parser.add_argument("--work", type=Path, default=HERE.parent / "work" / "lfw-speed",
                        help="where the pairs subsets, quick crops and each variant's reps and evaluation go")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--errors", action="store_true", help="list the wrong pairs of each variant")
    parser.add_argument("--mixed", action="store_true",
                        help="also score each variant against the first one (a gallery made in one precision, "
                        "queried in another): the first image of every pair from the first variant, at the "
                        "model's fixed threshold, and how far each face moved")
    parser.add_argument("--quick", action="store_true",
                        help="2 + 2 pairs per fold of View 2 (or 10 + 10 of each View 1 file), aligned here: "
                        "same steps, figures not quotable")
    return parser


ARGS = build_parser().parse_args() if __name__ == "__main__" else build_parser().parse_args([])
if __name__ == "__main__" and ARGS.threads:
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import time  # noqa: E402


def parse_variant(text: str) -> dict:
    parts = text.split(":")
    variant = {"precision": parts[0], "flip": False, "tta": 0}
    for part in parts[1:]:
        if part == "flip":
            variant["flip"] = True
        elif part.startswith("tta") and part[3:].isdigit():
            variant["tta"] = int(part[3:])
        else:
            raise SystemExit(f"unknown variant part {part!r} in {text!r}; use PRECISION[:flip][:ttaN]")
    return variant


def mixed_table(pairs, folders: dict, threshold: float) -> None:
    """Accuracy at the model's threshold with each pair's first image from the first variant and
    its second from another (the operating points were calibrated in fp32: does a gallery made in
    bf16 or int8 still match?), verdicts changed against the first variant alone, and per face
    the squared L2 to the first variant's vector (median / max / faces over 0.0008)."""
    import numpy as np

    from facenet_cli.evaluate.lfw import read_pairs
    from facenet_cli.formats.reps import read_reps

    def by_key(reps_dir):
        reps = read_reps(reps_dir)
        return {f"{Path(p).parent.name}/{Path(p).stem}": v for p, v in zip(reps.paths, reps.embeddings)}

    pairs = read_pairs(pairs)
    first_keys, second_keys = pairs.keys()
    tables = {text: by_key(folder) for text, folder in folders.items()}
    base_name, base = next(iter(tables.items()))

    def distances(a, b):
        return np.array([float(((a[x] - b[y]) ** 2).sum()) for x, y in zip(first_keys, second_keys)])

    reference = distances(base, base)
    print(f"\nmixed: first image of each pair from {base_name}, second from the variant; threshold {threshold:.3f}")
    print(f"{'variant':22} {'accuracy':>9} {'changed':>8} {'max |d change|':>15} {'face sq. L2 median':>19} "
          f"{'max':>8} {'> 0.0008':>9}")
    for text, table in tables.items():
        d = distances(base, table)
        moved = np.array([float(((table[k] - base[k]) ** 2).sum()) for k in base])
        print(f"{text:22} {((d <= threshold) == pairs.same).mean():9.4f} "
              f"{int(((d <= threshold) != (reference <= threshold)).sum()):8d} {np.abs(d - reference).max():15.4f} "
              f"{np.median(moved):19.6f} {moved.max():8.6f} {int((moved > 0.0008).sum()):9d}")


ALIGN_OPTIONS = ["--faces", "center-only", "--detector", "hog+cnn", "--fallback", "center"]  # README, View 2


def aligned_subset(aligned: Path, images: list[Path], dest: Path) -> Path:
    """dest/<person>/<image>.png linked to the aligned crops of `images` (LFW jpg paths)."""
    sys.path.insert(0, str(HERE))
    from _common import LFW_IMAGES, link, shell_line

    make = shell_line(["facenet", "align", LFW_IMAGES, aligned, *ALIGN_OPTIONS])
    if not aligned.is_dir():
        raise SystemExit(f"The aligned LFW crops {aligned} do not exist; make them with `{make}` "
                         "(or run with --quick, which aligns the few images it needs).")
    for image in images:
        crop = aligned / image.parent.name / (image.stem + ".png")
        if not crop.is_file():
            raise SystemExit(f"{crop} is missing; align the rest of LFW with `{make}` (it keeps what is done).")
        link(crop, dest / image.parent.name / crop.name)
    return dest


def aligned_here(images: list[Path], dest: Path) -> Path:
    """The View 2 alignment of `images` (LFW jpg paths), made by the real `facenet align` into dest."""
    sys.path.insert(0, str(HERE))
    from _common import make_tree, run_facenet_here

    raw = make_tree(images, dest.parent / "raw")
    run_facenet_here(["align", raw, dest, *ALIGN_OPTIONS, "--workers", "2"])
    return dest


def main() -> None:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from _common import LFW, need_lfw, pair_image_files, pairs_subset, shell_line

    import torch

    from facenet_cli.models.catalogue import get_record
    from facenet_cli.nets.embedder import Embedder
    from facenet_cli.evaluate.lfw import read_pairs
    from facenet_cli.evaluate.report import evaluate_lfw
    from facenet_cli.pipeline.represent import represent_tree

    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    variants = ARGS.variant or ["fp32:flip"]
    root = ARGS.work / (f"view{ARGS.view}" + ("-quick" if ARGS.quick else ""))
    need_lfw()
    if ARGS.quick:
        shutil.rmtree(root, ignore_errors=True)
    if ARGS.view == 2:
        pairs = LFW / "pairs.txt"
        train = None
        if ARGS.quick:
            pairs = pairs_subset(pairs, root / "pairs.txt", 2)
        images = pair_image_files(pairs)
    else:
        pairs, train = LFW / "pairsDevTest.txt", LFW / "pairsDevTrain.txt"
        if ARGS.quick:
            pairs = pairs_subset(pairs, root / "pairsDevTest.txt", 10)
            train = pairs_subset(train, root / "pairsDevTrain.txt", 10)
        images = sorted(set(pair_image_files(pairs)) | set(pair_image_files(train)))
    if ARGS.quick:  # its own crops, so that it runs where all of LFW was never aligned (CI)
        crops = aligned_here(images, root / "aligned")
    else:
        crops = aligned_subset(ARGS.aligned, images, root / "aligned")
    record = get_record("dlib-resnet.v1")
    rows = []
    folders = {}
    for text in variants:
        variant = parse_variant(text)
        folder = root / text.replace(":", "-")
        reps = folder / "reps"
        folders[text] = reps
        seconds = None
        if ARGS.fresh or not (reps / "meta.json").is_file():
            embedder = Embedder(record, device="cpu", batch_size=ARGS.batch_size, **variant)
            started = time.perf_counter()
            represent_tree(crops, reps, embedder)
            seconds = time.perf_counter() - started
        result = evaluate_lfw(reps, pairs, folder / "eval", dev_train=train)
        command = ["facenet", "lfw-roc", reps, pairs, folder / "eval"] + (["--train-pairs", train] if train else [])
        rows.append((text, result, seconds, len(images)))
        print(f"{text}: accuracy {result.accuracy_mean:.4f} +- {result.accuracy_std:.4f}, AUC {result.auc:.4f}"
              + (f", {len(images) / seconds:.1f} faces/s" if seconds else " (reps reused)")
              + f"\n  {shell_line(command)}", flush=True)
        if ARGS.errors:
            wrong = [(f.index, p) for f in result.folds for p in getattr(f, "wrong", [])]
            print(f"  wrong pairs: {len(wrong)}")
    print(f"\nLFW View {ARGS.view} ({read_pairs(pairs).path.name}, {len(images)} images), "
          f"crops {crops if ARGS.quick else ARGS.aligned}; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()}")
    print(f"{'variant':22} {'passes/face':>11} {'accuracy':>16} {'AUC':>7} {'faces/s':>8}")
    for text, result, seconds, count in rows:
        v = parse_variant(text)
        passes = (1 + v["tta"]) * (2 if v["flip"] else 1)
        rate = f"{count / seconds:8.1f}" if seconds else f"{'reused':>8}"
        print(f"{text:22} {passes:11d} {result.accuracy_mean:8.4f} +- {result.accuracy_std:.4f} {result.auc:7.4f} {rate}")
    if ARGS.mixed:
        mixed_table(pairs, folders, record.threshold)


if __name__ == "__main__":
    main()
