"""The unknown gate calibrated per gallery: does every gallery keep its FAR? (issue 21)

Input: a `facenet represent` output of all 13,233 LFW images made by the README's View 2 pipeline
(`facenet align --faces center-only --detector hog+cnn --fallback center`, `facenet represent
--flip`), by default WORK/lfw-all/reps (`--reps` to name another; identify_lfw.py reads the same).
`--quick` makes its own instead: that pipeline on a few held-out people (12 with 6 images, 80
held-out strangers with fewer, their first image), in WORK/gallery-calibration-quick; galleries of 2, 5
and 10 of them, the same table, figures too few to quote.

The split, deterministic (`split_people`): LFW's people with fewer than 6 images, sorted by
name, every second one from the first, are the **stranger cohort**, one face each (their first
image; 2,719 faces): `--make-cohort` writes their embeddings (float16) to
facenet_cli/models/cohorts/ and prints the catalogue entry with its SHA-256. Every other LFW
person is **held out**: galleries and their strangers are composed from them alone, so the
cohort never meets a face it is measured on. (A cohort of the people with one image only was
tried first: it named 5-10 % fewer strangers than the held-out ones, who are more often
people photographed many times, so galleries named slightly more strangers than asked.)

The table: galleries of 2, 5, 10, 50 and 158 held-out people with at least 6 images (several
random draws each), enrolled with 1, 3 or 5 photos each (their first by file name), a mix of 1, 3
and 5 (uneven), or the 5 photos that differ most (`varied`: the farthest-apart ones, as photos of
one person in many conditions); queries = up to 10 of each person's other photos; strangers = one
photo (the first) of every held-out person not in the gallery. For each cell: the share of
strangers named at `--far` (pooled over draws) against the asked FAR and its sampling error (two
standard errors of a binomial share over the cohort's size and the number of distinct stranger
faces, as the draws share them), and the share of
known queries named right, with the gallery's own threshold ("per gallery") and with the model's
LFW curve it replaces ("curve", today's gate).

    python benchmarks/gallery_calibration.py                 # the table at FAR 1 %
    python benchmarks/gallery_calibration.py --far 0.001     # another operating point
    python benchmarks/gallery_calibration.py --quick         # its own few people (seconds): not quotable
    python benchmarks/gallery_calibration.py --make-cohort   # rewrite the shipped cohort file
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_tree, people_with_images, run_facenet_here, spread  # noqa: E402
from identify_lfw import DEFAULT_WORK, Faces, enrolment_of, load, missing_reps  # noqa: E402
from facenet_cli.formats.reps import read_reps  # noqa: E402
from facenet_cli.models.catalogue import get_record  # noqa: E402
from facenet_cli.recognition.calibration import (COHORT_DIR, StrangerCohort, calibrate,  # noqa: E402
                                                 cohort_spec, load_cohort, operating_point)
from facenet_cli.recognition.matcher import matcher_for, operating_curve  # noqa: E402

MODEL = "dlib-resnet.v1"
COHORT_FILE = f"{MODEL}-strangers.npy"
SIZES = (2, 5, 10, 50, 158)
DRAWS = {2: 60, 5: 40, 10: 30, 50: 10, 158: 6}
COMPOSITIONS = ("1 photo", "3 photos", "5 photos", "1/3/5 mixed", "5 varied")
MIN_IMAGES = 6  # known people: 5 photos to enrol and at least one query
QUICK_KNOWN, QUICK_STRANGERS = 12, 80
MAX_QUERIES = 10  # per person, so George W Bush's 530 photos do not outweigh everyone


def split_names(images: dict[str, int]) -> tuple[list[str], list[str]]:
    """(cohort people, held-out people) from each LFW person's number of images: the cohort is
    every second person with fewer than MIN_IMAGES images, by name; everyone else is held out."""
    few = sorted(n for n, count in images.items() if count < MIN_IMAGES)
    cohort = few[0::2]
    chosen = set(cohort)
    return cohort, sorted(n for n in images if n not in chosen)


def split_people(faces: Faces) -> tuple[list[str], list[str]]:
    """split_names of the people of `faces` (all of LFW)."""
    return split_names({n: len(rows) for n, rows in faces.people.items()})


def quick_reps(work: Path) -> Path:
    """The View 2 pipeline on a few held-out LFW people (none of them in the cohort), made in
    `work` and kept while it holds these same images."""
    everyone = people_with_images(1)
    _, held_out = split_names({name: len(images) for name, images in everyone})
    held_out = set(held_out)
    known = spread([images[:MIN_IMAGES] for _, images in people_with_images(MIN_IMAGES)], QUICK_KNOWN)
    strangers = spread([images[0] for name, images in everyone if len(images) < MIN_IMAGES and name in held_out],
                       QUICK_STRANGERS)
    files = [f for images in known for f in images] + strangers
    reps = work / "reps"
    if (reps / "meta.json").is_file() and sorted(Path(p).stem for p in read_reps(reps).paths) == \
            sorted(f.stem for f in files):
        return reps
    raw = make_tree(files, work / "raw")
    run_facenet_here(["align", raw, work / "aligned", "--faces", "center-only", "--detector", "hog+cnn",
                      "--fallback", "center", "--workers", "2"])
    run_facenet_here(["represent", work / "aligned", reps, "--flip"])
    return reps


def make_cohort(faces: Faces, out_dir: Path) -> dict:
    cohort, _ = split_people(faces)
    vectors = np.stack([faces.embeddings[faces.people[n][0]] for n in cohort]).astype(np.float16)
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    data = buffer.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / COHORT_FILE).write_bytes(data)
    return {"filename": COHORT_FILE, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "faces": len(cohort), "flip": True,
            "people": f"LFW: every second person with fewer than {MIN_IMAGES} images, sorted by name "
                      f"({len(cohort):,} people, their first image); no gallery or stranger of "
                      "benchmarks/gallery_calibration.py is among them",
            "embeddings": "dlib-resnet.v1 --flip, View 2 pipeline (align --faces center-only --detector hog+cnn "
                          "--fallback center), stored as float16",
            "command": "python benchmarks/gallery_calibration.py --make-cohort"}


def varied(rows: list[int], embeddings: np.ndarray, count: int) -> list[int]:
    """`count` of a person's photos that differ most: greedy farthest points from the first."""
    chosen = [rows[0]]
    while len(chosen) < min(count, len(rows)):
        rest = [r for r in rows if r not in chosen]
        d = [min(float(np.sum((embeddings[r] - embeddings[c]) ** 2)) for c in chosen) for r in rest]
        chosen.append(rest[int(np.argmax(d))])
    return chosen


def enrolled(rows: list[int], composition: str, slot: int, embeddings: np.ndarray) -> list[int]:
    if composition == "5 varied":
        return varied(rows, embeddings, 5)
    count = {"1 photo": 1, "3 photos": 3, "5 photos": 5}.get(composition) or (1, 3, 5)[slot % 3]
    return rows[:count]


def measure(faces: Faces, cohort: StrangerCohort, held_out: list[str], size: int, composition: str, far: float,
            draws: int, rng: np.random.Generator) -> dict:
    pool = [n for n in held_out if len(faces.people[n]) >= MIN_IMAGES]
    curve = operating_curve(get_record(MODEL))
    totals = collections.Counter()
    per_draw = []
    warned = 0
    distinct = set()  # the draws share their strangers: the sampling error counts each face once
    for _ in range(draws):
        people = sorted(rng.choice(pool, size, replace=False))
        order = rng.permutation(size)  # which person gets 1, 3 or 5 photos in the mixed composition
        gallery = {n: enrolled(faces.people[n], composition, int(order[i]), faces.embeddings)
                   for i, n in enumerate(people)}
        enrolment = enrolment_of(faces, gallery)
        queries = [(r, i) for i, n in enumerate(people)
                   for r in [r for r in faces.people[n] if r not in gallery[n]][:MAX_QUERIES]]
        in_gallery = set(people)
        strangers = np.array([faces.people[n][0] for n in held_out if n not in in_gallery])
        matcher = matcher_for(enrolment, far=far, calibrate=False)
        point = operating_point(calibrate(matcher, cohort), far, curve, size)
        curve_threshold = curve.threshold(far, size)
        warned += bool(point.warnings)
        q_order, q_scores, _, _ = matcher.scores(faces.embeddings[[r for r, _ in queries]])
        s_scores = np.concatenate([matcher.scores(faces.embeddings[strangers[i:i + 2048]])[1]
                                   for i in range(0, len(strangers), 2048)])
        right = q_order[:, 0] == np.array([i for _, i in queries])
        for label, t in (("ours", point.threshold), ("curve", curve_threshold)):
            totals[f"{label} strangers named"] += int((s_scores <= t).sum())
            totals[f"{label} right"] += int((right & (q_scores <= t)).sum())
            totals[f"{label} wrong"] += int((~right & (q_scores <= t)).sum())
        totals["strangers"] += len(strangers)
        distinct.update(strangers.tolist())
        totals["queries"] += len(queries)
        per_draw.append(float((s_scores <= point.threshold).mean()))
    named = totals["ours strangers named"] / totals["strangers"]
    error = 2 * math.sqrt(far * (1 - far) * (1 / cohort.size + 1 / len(distinct)))
    return {"size": size, "composition": composition, "draws": draws, "strangers": totals["strangers"],
            "queries": totals["queries"], "far": far, "strangers_named": named, "sampling_error": error,
            "within": named <= far + error, "worst_draw": max(per_draw),
            "known_named_right": totals["ours right"] / totals["queries"],
            "known_named_wrong": totals["ours wrong"] / totals["queries"],
            "curve_strangers_named": totals["curve strangers named"] / totals["strangers"],
            "curve_known_named_right": totals["curve right"] / totals["queries"],
            "draws_with_warning": warned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder: reads WORK/lfw-all/reps")
    parser.add_argument("--reps", type=Path, help="represent output of all LFW images (default WORK/lfw-all/reps)")
    parser.add_argument("--far", type=float, default=0.01, help="the asked FAR (default 0.01)")
    parser.add_argument("--quick", action="store_true",
                        help="its own few held-out people (WORK/gallery-calibration-quick), galleries of 2-10")
    parser.add_argument("--make-cohort", action="store_true",
                        help=f"write {COHORT_DIR.relative_to(ROOT)}/{COHORT_FILE} and print its catalogue entry")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.quick and args.make_cohort:
        parser.error("--make-cohort needs the embeddings of all LFW, not --quick's few people")
    if args.quick and args.reps is None:
        reps_dir = quick_reps(args.work / "gallery-calibration-quick")
    else:
        reps_dir = args.reps or args.work / "lfw-all" / "reps"
        if not (reps_dir / "meta.json").is_file():
            raise SystemExit(missing_reps(reps_dir, False, False))
    faces = load(reps_dir)
    if args.make_cohort:
        print(json.dumps(make_cohort(faces, COHORT_DIR), indent=4))
        return
    spec = cohort_spec(get_record(MODEL).to_dict())
    if not spec:
        raise SystemExit(f"{MODEL} ships no stranger cohort yet; run with --make-cohort and add its entry to "
                         "the catalogue.")
    cohort = load_cohort(spec)
    if args.quick:  # its own people, none of them in the cohort
        held_out, sizes = sorted(faces.people), tuple(s for s in SIZES if s <= 10)
    else:
        cohort_people, held_out = split_people(faces)
        sizes = SIZES
        if len(cohort_people) != cohort.size:
            raise SystemExit(f"The shipped cohort holds {cohort.size} faces but this split gives "
                             f"{len(cohort_people)}; is --reps all of LFW?")
    rng = np.random.default_rng(args.seed)
    compositions = ("1 photo", "3 photos", "1/3/5 mixed") if args.quick else COMPOSITIONS
    print(f"Galleries of held-out LFW people (>= {MIN_IMAGES} images), strangers = one photo of every other "
          f"held-out person; cohort {cohort.size:,} faces; asked FAR {args.far:g}\n")
    print("| people | photos each | draws | strangers named (per gallery) | asked FAR + sampling error | "
          "worst draw | known named right | known named wrong | today's curve: strangers named / known named "
          "right | draws with a spread warning |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for size in sizes:
        for composition in compositions:
            draws = max(2, DRAWS[size] // 4) if args.quick else DRAWS[size]
            r = measure(faces, cohort, held_out, size, composition, args.far, draws, rng)
            rows.append(r)
            print(f"| {size} | {composition} | {draws} | {r['strangers_named']:.4f} "
                  f"{'ok' if r['within'] else 'ABOVE'} | {args.far:g} + {r['sampling_error']:.4f} | "
                  f"{r['worst_draw']:.4f} | {r['known_named_right']:.4f} | {r['known_named_wrong']:.4f} | "
                  f"{r['curve_strangers_named']:.4f} / {r['curve_known_named_right']:.4f} | "
                  f"{r['draws_with_warning']} |", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"\n{time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
