"""Tightly cropped faces under hard lighting: `--fallback center` against `--fallback whole`.

    python benchmarks/tight_crops.py [--people 300] [--workers 2] [--out work/tight-crops] [--quick]

Many public face sets, and most exports of other tools, are tight face crops. This makes such a
set from LFW: for each of N people with 2+ images (spread over the alphabet), their first two
deep-funneled images, each cropped to the face box HOG finds in it (no margin; an image HOG
finds nothing in is left out, a person left with one image too) and saved as JPEG (quality 95),
once plain and once under each hard lighting: dark gamma (2.2), low contrast (35 % of the range)
and a strong side shadow (the left of the face down to 12 % brightness), all in one tree
(`crops/<person>/<image>-<lighting>.jpg`). The tree is aligned twice with the default model's
spec (`facenet align CROPS ALIGNED --faces center --fallback center|whole`, HOG, upsample auto)
and embedded (`facenet represent`); the commands run in this process through the command-line
parser and are printed. Reported per lighting: how often HOG finds a face in the crop, and the
nearest-neighbour rank-1 among the crops of that lighting (each face's nearest other face: the
same person?), a crop without an embedding counting as a miss. The reference row is the same
images uncropped, aligned as for LFW.

`--quick`: 12 people (24 images), one worker, same steps and table, in work/tight-crops-quick.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUICK_HELP, ROOT, make_tree, people_with_images, run_facenet_here, spread  # noqa: E402

MODEL = "dlib-resnet.v1"
VARIANTS = ("plain", "dark gamma 2.2", "low contrast", "side shadow")
FALLBACKS = ("center", "whole")
JPEG_QUALITY = 95


# ---------------------------------------------------------------- making the crops

def relight(rgb: np.ndarray, variant: str) -> np.ndarray:
    """The crop under one of the hard lightings (uint8 RGB in, uint8 RGB out)."""
    x = rgb.astype(np.float32) / 255.0
    if variant == "plain":
        y = x
    elif variant == "dark gamma 2.2":
        y = x ** 2.2
    elif variant == "low contrast":
        y = 0.5 + 0.35 * (x - 0.5)
    elif variant == "side shadow":
        # Light from the right: brightness falls smoothly to 12 % over the left half of the face.
        width = rgb.shape[1]
        t = np.clip((np.arange(width) / max(width - 1, 1) - 0.2) / 0.6, 0.0, 1.0)
        ramp = 0.12 + 0.88 * t * t * (3 - 2 * t)
        y = x * ramp[None, :, None]
    else:
        raise ValueError(f"unknown lighting {variant!r}")
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


def variant_tag(variant: str) -> str:
    """The file-name suffix of a lighting: `plain`, `dark-gamma-22`, ..."""
    return variant.replace(" ", "-").replace(".", "")


def variant_of(path: str) -> str:
    stem = Path(path).stem
    return next(v for v in VARIANTS if stem.endswith("-" + variant_tag(v)))


def make_crops(people: int, out: Path) -> tuple[Path, Path, int]:
    """Write OUT/original (links to the LFW images) and OUT/crops/<person>/<image>-<lighting>.jpg;
    returns both trees and how many chosen images were left out (no face in the original, or the
    person's other image had none)."""
    from PIL import Image

    from facenet_cli.align.aligner import choose_faces
    from facenet_cli.detect import FaceDetector
    from facenet_cli.images import read_rgb

    detector = FaceDetector("hog", "auto")
    chosen = spread(people_with_images(2), people)
    crops: dict[str, dict[Path, np.ndarray]] = {}
    originals: list[Path] = []
    considered = 0
    for name, files in chosen:
        kept = []
        for f in files[:2]:
            considered += 1
            rgb = read_rgb(f)
            height, width = rgb.shape[:2]
            boxes = detector.detect(rgb, lambda b: choose_faces(b, "center", height, width))
            if not boxes:
                continue
            box = boxes[0]
            left, top = max(box.left, 0), max(box.top, 0)
            right, bottom = min(box.right, width - 1), min(box.bottom, height - 1)
            kept.append((f, rgb[top:bottom + 1, left:right + 1]))
        if len(kept) < 2:  # rank-1 needs a second face of the person
            continue
        for f, crop in kept:
            originals.append(f)
            crops.setdefault(name, {})[f] = crop

    tree = out / "crops"
    shutil.rmtree(tree, ignore_errors=True)
    for name, images in crops.items():
        (tree / name).mkdir(parents=True)
        for f, crop in images.items():
            for variant in VARIANTS:
                Image.fromarray(relight(crop, variant)).save(tree / name / f"{f.stem}-{variant_tag(variant)}.jpg",
                                                             quality=JPEG_QUALITY)
    return make_tree(originals, out / "original"), tree, considered - len(originals)


# ---------------------------------------------------------------- measuring

def nearest_is_same(vectors: np.ndarray, people: list[str]) -> np.ndarray:
    """For each face: is its nearest other face (cosine) the same person?"""
    if len(vectors) < 2:
        return np.zeros(len(vectors), dtype=bool)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    names = np.array(people)
    return names[similarity.argmax(axis=1)] == names


def measure(tree: Path, out: Path, fallback: str, workers: int, group=lambda path: "") -> dict[str, tuple]:
    """Align TREE with the fallback and represent it; per group of files (by `group(path)`):
    (HOG found a face, images, rank-1 within the group, rank-1 of the fallback crops alone).
    Rank-1 is over every image of the group: a file without an embedding counts as a miss."""
    from facenet_cli.formats.reps import read_reps

    aligned, reps_dir = out / "aligned", out / "reps"
    shutil.rmtree(out, ignore_errors=True)
    run_facenet_here(["align", tree, aligned, "--model", MODEL, "--faces", "center", "--fallback", fallback,
                      "--workers", workers])
    run_facenet_here(["represent", aligned, reps_dir, "--model", MODEL, "--device", "cpu"])
    with open(aligned / "align-report.csv", newline="", encoding="utf-8") as fh:
        report = list(csv.DictReader(fh))
    reps = read_reps(reps_dir)
    # Each embedded face back to its input file: OUT/aligned/<person>/<stem>.png <- <person>/<stem>.<ext>
    stem_of = {str(Path(r["input"]).with_suffix("")): r["input"] for r in report}
    inputs = [stem_of[Path(p).relative_to(aligned).with_suffix("").as_posix()] for p in reps.paths]
    status = {r["input"]: r["status"] for r in report}
    results = {}
    for key in sorted({group(r["input"]) for r in report}):
        rows = [r for r in report if group(r["input"]) == key]
        found = sum(r["status"] == "aligned" for r in rows)
        mine = [i for i, f in enumerate(inputs) if group(f) == key]
        same = nearest_is_same(reps.embeddings[mine], [reps.people[i] for i in mine])
        fell_back = np.array([status[inputs[i]] == "fallback" for i in mine], dtype=bool)
        fallback_rank1 = float(same[fell_back].mean()) if fell_back.any() else float("nan")
        results[key] = (found, len(rows), float(same.sum()) / len(rows), fallback_rank1)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=300, help="people with 2+ LFW images (two images each)")
    parser.add_argument("--workers", type=int, default=2, help="align processes")
    parser.add_argument("--out", type=Path, help="work folder (default work/tight-crops, with --quick work/tight-crops-quick)")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.people, args.workers = 12, 1
    out = (args.out or ROOT / "work" / ("tight-crops-quick" if args.quick else "tight-crops")).resolve()
    started = time.perf_counter()
    original, crops, missed = make_crops(args.people, out)
    print(f"{len(list(original.glob('*/*.jpg')))} LFW images of {len(list(original.iterdir()))} people cropped to "
          f"their HOG face box, {len(VARIANTS)} lightings each ({missed} images left out: no face in the original, "
          "or the person's other image had none)", flush=True)
    reference = measure(original, out / "original-aligned", "center", args.workers)[""]
    by_center = measure(crops, out / "center", "center", args.workers, variant_of)
    by_whole = measure(crops, out / "whole", "whole", args.workers, variant_of)
    rows = [("original LFW images (reference)", *reference[:3], None)]
    for variant in VARIANTS:
        found, images, rank1_center, _ = by_center[variant]
        rows.append((f"tight crops, {variant}", found, images, rank1_center, by_whole[variant][2]))

    print(f"\nTight face crops of LFW, {MODEL}, HOG (upsample auto), nearest-neighbour rank-1 over all "
          f"crops of a row ({time.perf_counter() - started:.0f} s)")
    print(f"{'images':<34} {'count':>6} {'HOG found':>10} {'rank-1 --fallback center':>25} "
          f"{'rank-1 --fallback whole':>24}")
    for label, found, images, center, whole in rows:
        whole_text = f"{whole:.3f}" if whole is not None else ""
        print(f"{label:<34} {images:>6} {found / images:>10.1%} {center:>25.3f} {whole_text:>24}")
    hard = rows[2:]
    print(f"{'tight crops, hard lighting (mean)':<34} {sum(r[2] for r in hard):>6} "
          f"{sum(r[1] for r in hard) / sum(r[2] for r in hard):>10.1%} "
          f"{np.mean([r[3] for r in hard]):>25.3f} {np.mean([r[4] for r in hard]):>24.3f}")
    print("\nThe crops HOG missed alone (the fallback's box): rank-1 of those crops, in the same runs")
    print(f"{'images':<34} {'missed':>6} {'rank-1 --fallback center':>25} {'rank-1 --fallback whole':>24}")
    for variant in VARIANTS:
        found, images, _, center_missed = by_center[variant]
        print(f"{'tight crops, ' + variant:<34} {images - found:>6} {center_missed:>25.3f} {by_whole[variant][3]:>24.3f}")


if __name__ == "__main__":
    main()
