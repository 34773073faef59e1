"""Identification on LFW: who is this, or `unknown`? The protocol of issue 9, written down.

Input: a `facenet represent` output of all 13,233 LFW images (the README's View 2 pipeline:
`facenet align --faces center-only --detector hog+cnn --fallback center`, `facenet represent
--flip`), by default WORK/lfw-all/reps (`--work`, default work/; `--reps` to name another).
`--quick` makes its own instead: that same pipeline on a few real LFW people outside
peopleDevTrain (5 with 10 images each, the known people, and 40 strangers), in
WORK/identify-lfw-quick, in seconds.

Protocol (open-set identification):
- known people: those with at least 10 images; their first 5 images (sorted by file name) are
  enrolled, their other images are queries;
- strangers: every image of every other person.
Figures: closed-set rank-1 (queries only), DIR @ FAR (detection and identification rate: the
share of known queries named right while at most that share of strangers get a name, the
threshold read off the strangers), and the share of strangers named (and DIR) at the default
operating point, whose threshold comes from the model record and was fixed beforehand; then the
same at the point `facenet identify` now uses, calibrated for this gallery against the model's
stranger cohort (the cohort's people left out of the strangers; benchmarks/gallery_calibration.py).

Calibration (`--calibrate`): on the people of LFW's peopleDevTrain.txt only. Galleries of about
10, 158 and 1,000 of those people (several random draws each; up to 5 enrolled images per
person), strangers = every other peopleDevTrain image; the gate threshold for each FAR is the
quantile of the strangers' gate scores. It prints the dict for `DLIB_IDENTIFY_POINTS`.
Measurement is then on the people NOT in peopleDevTrain (the same protocol restricted to them:
disjoint from calibration); the issue's full protocol (all people) is printed too, with the
caveat that about 70 % of its people were calibration people.

    python benchmarks/identify_lfw.py                     # every figure, baseline vs ours
    python benchmarks/identify_lfw.py --variants          # every gate idea, on the calibration people
    python benchmarks/identify_lfw.py --calibrate         # recompute the operating points
    python benchmarks/identify_lfw.py --quick             # rank-1 and default point, a few test people
    python benchmarks/identify_lfw.py --index             # also with the gallery's search index: unchanged?
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LFW_IMAGES, make_tree, people_with_images, run_facenet_here, shell_line, spread  # noqa: E402
from facenet_cli.models.catalogue import get_record  # noqa: E402
from facenet_cli.errors import FacenetError  # noqa: E402
from facenet_cli.store.types import Enrolment, GalleryModel  # noqa: E402
from facenet_cli.recognition.identify import Matcher, OperatingCurve, operating_curve  # noqa: E402
from facenet_cli.formats.reps import read_reps  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "lfw"
DEFAULT_WORK = ROOT / "work"
QUICK_KNOWN, QUICK_STRANGERS = 5, 40  # --quick: known people (10 images each) and one-image strangers
FARS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
SIZES = (10, 158, 1000)
DRAWS = {10: 60, 158: 20, 1000: 10}
PAIR_THRESHOLD = get_record("dlib-resnet.v1").threshold


@dataclass
class Faces:
    embeddings: np.ndarray
    people: dict[str, list[int]]  # person -> row indices, sorted by file name


def missing_reps(reps_dir: Path, quick: bool, quick_would_do: bool) -> str:
    """The one sentence that says how to make the LFW embeddings this script reads."""
    aligned = reps_dir.parent / "aligned"
    others = []
    if reps_dir.resolve() == (DEFAULT_WORK / "lfw-all" / "reps").resolve():
        others.append("`python benchmarks/cluster_lfw.py`, which runs both")
    if quick:
        others.append("run --quick without --reps")
    elif quick_would_do:
        others.append("run with --quick")
    return (f"{reps_dir} holds no LFW embeddings; make them with `"
            + shell_line(["facenet", "align", LFW_IMAGES, aligned, "--faces", "center-only", "--detector", "hog+cnn",
                          "--fallback", "center"])
            + " && " + shell_line(["facenet", "represent", aligned, reps_dir, "--flip"]) + "`"
            + (f" (or {'; or '.join(others)})." if others else "."))


def quick_reps(work: Path) -> Path:
    """The View 2 pipeline on a few real LFW people outside peopleDevTrain, made in `work` (kept
    for the next run while it holds these same images): QUICK_KNOWN people with at least 10
    images (their first 10), QUICK_STRANGERS people with fewer (their first image), both spread
    over the alphabet."""
    train = read_people(DATA / "peopleDevTrain.txt")
    test_people = [(name, images) for name, images in people_with_images(1) if name not in train]
    known = spread([images[:10] for _, images in test_people if len(images) >= 10], QUICK_KNOWN)
    strangers = spread([images[0] for _, images in test_people if len(images) < 10], QUICK_STRANGERS)
    files = [f for images in known for f in images] + strangers
    reps = work / "reps"
    if (reps / "meta.json").is_file():
        made = read_reps(reps)
        if sorted(Path(p).stem for p in made.paths) == sorted(f.stem for f in files):
            return reps
    shutil.rmtree(work, ignore_errors=True)  # another size or an interrupted run: start again
    raw = make_tree(files, work / "raw")
    run_facenet_here(["align", raw, work / "aligned", "--faces", "center-only", "--detector", "hog+cnn",
                      "--fallback", "center", "--workers", "2"])
    run_facenet_here(["represent", work / "aligned", reps, "--flip"])
    return reps


def load(reps_dir: Path) -> Faces:
    try:
        reps = read_reps(reps_dir)
    except FacenetError as exc:
        raise SystemExit(str(exc)) from None
    people: dict[str, list[int]] = collections.defaultdict(list)
    for row, (path, person) in enumerate(zip(reps.paths, reps.people)):
        people[person].append(row)
    for rows in people.values():
        rows.sort(key=lambda r: Path(reps.paths[r]).name)
    return Faces(reps.embeddings.astype(np.float32), dict(people))


def read_people(path: Path) -> set[str]:
    lines = path.read_text().split("\n")[1:]
    return {line.split("\t")[0] for line in lines if line.strip()}


def enrolment_of(faces: Faces, gallery: dict[str, list[int]]) -> Enrolment:
    names = sorted(gallery)
    rows = [r for n in names for r in gallery[n]]
    index = np.array([i for i, n in enumerate(names) for _ in gallery[n]])
    model = GalleryModel("dlib-resnet.v1", "dlib-resnet.v1", "", {}, 128, True, get_record("dlib-resnet.v1").to_dict())
    return Enrolment(faces.embeddings[rows], index, names, np.array(rows), model)


@dataclass
class Protocol:
    enrolment: Enrolment
    queries: np.ndarray
    query_people: np.ndarray  # index into enrolment.names
    strangers: np.ndarray


def protocol(faces: Faces, names: set[str], min_images: int = 10, enrol: int = 5) -> Protocol:
    known = sorted(n for n in names if len(faces.people[n]) >= min_images)
    enrolment = enrolment_of(faces, {n: faces.people[n][:enrol] for n in known})
    queries = [(r, i) for i, n in enumerate(known) for r in faces.people[n][enrol:]]
    strangers = [r for n in sorted(names) if n not in set(known) for r in faces.people[n]]
    return Protocol(enrolment, faces.embeddings[[r for r, _ in queries]], np.array([i for _, i in queries]),
                    faces.embeddings[strangers])


def answers(matcher: Matcher, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chosen person, gate score) per row, in chunks to keep memory small."""
    chosen, scores = [], []
    for start in range(0, len(x), 2048):
        order, score, _, _ = matcher.scores(x[start:start + 2048])
        chosen.append(order[:, 0])
        scores.append(score)
    return np.concatenate(chosen), np.concatenate(scores)


def threshold_at(stranger_scores: np.ndarray, far: float) -> float:
    """The largest threshold that names at most `far` of the strangers (a face is named at score <= t)."""
    ordered = np.sort(stranger_scores)
    allowed = int(np.floor(far * len(ordered)))
    if allowed == 0:
        return float(ordered[0]) - 1e-9
    return float(np.nextafter(ordered[allowed], -np.inf)) if allowed < len(ordered) else float(ordered[-1])


def figures(p: Protocol, method: str = "mean", gate: dict | None = None, threshold: float | None = None,
            far: float | None = None, curve: OperatingCurve | None = None, index: bool = False) -> dict:
    matcher = Matcher(p.enrolment, method=method, gate=gate or BASELINE_GATE, curve=curve,
                      threshold=threshold if (threshold is not None or curve is None) else None,
                      far=far if threshold is None and curve is not None else None)
    if index:  # people shortlisted by the gallery's search index (facenet_cli/store/face_index.py), as identify does
        from facenet_cli.store.face_index import FaceIndex

        matcher.use_index(FaceIndex.build(p.enrolment.embeddings, p.enrolment.face_ids))
    chosen, scores = answers(matcher, p.queries)
    s_chosen, s_scores = answers(matcher, p.strangers)
    right = chosen == p.query_people
    out = {"rank1": float(right.mean())}
    for level in (0.01, 0.001):
        t = threshold_at(s_scores, level)
        out[f"dir@{level:g}"] = float((right & (scores <= t)).mean())
    t = matcher.threshold
    out["threshold"] = t
    out["strangers_named"] = float((s_scores <= t).mean())
    out["dir_at_point"] = float((right & (scores <= t)).mean())
    return out


def per_gallery_point(faces: Faces, names: set[str], method: str, gate: dict, curve) -> dict | None:
    """The default point as identify sets it now: calibrated for this gallery against the model's
    stranger cohort (recognition/calibration.py); the cohort's people are left out of the strangers
    (benchmarks/gallery_calibration.py's split). None before the cohort ships."""
    from facenet_cli.recognition.calibration import calibrate, cohort_spec, load_cohort
    from gallery_calibration import split_people

    spec = cohort_spec(get_record("dlib-resnet.v1").to_dict())
    if not spec:
        return None
    cohort_people, _ = split_people(faces)
    p = protocol(faces, names - set(cohort_people))
    matcher = Matcher(p.enrolment, method=method, gate=gate, curve=curve)
    matcher.use_calibration(calibrate(matcher, load_cohort(spec)))
    chosen, scores = answers(matcher, p.queries)
    _, s_scores = answers(matcher, p.strangers)
    t = matcher.threshold
    return {"threshold": t, "strangers_named": float((s_scores <= t).mean()),
            "dir_at_point": float(((chosen == p.query_people) & (scores <= t)).mean())}


# ------------------------------------------------------------------ calibration

def calibration_galleries(faces: Faces, names: set[str], size: int, rng: np.random.Generator):
    """A random gallery of `size` people (those with the most images first: >= 5 when there are
    enough, else >= 2), up to 5 enrolled images each, and every other image as strangers."""
    rich = sorted(n for n in names if len(faces.people[n]) >= 5)
    some = sorted(n for n in names if 2 <= len(faces.people[n]) < 5)
    if size <= len(rich):
        chosen = list(rng.choice(rich, size, replace=False))
    else:
        chosen = rich + list(rng.choice(some, size - len(rich), replace=False))
    enrolment = enrolment_of(faces, {n: faces.people[n][:5] for n in chosen})
    strangers = [r for n in sorted(names - set(chosen)) for r in faces.people[n]]
    return enrolment, faces.embeddings[strangers]


def calibrate(faces: Faces, names: set[str], method: str, gate: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    table = []
    for size in SIZES:
        pooled = []
        for _ in range(DRAWS[size]):
            enrolment, strangers = calibration_galleries(faces, names, size, rng)
            _, scores = answers(Matcher(enrolment, method=method, gate=gate, threshold=0.0), strangers)
            pooled.append(scores)
        pooled = np.concatenate(pooled)
        table.append([round(float(np.quantile(pooled, far)), 5) for far in FARS])
        print(f"  size {size}: {len(pooled)} stranger scores over {DRAWS[size]} galleries", file=sys.stderr)
    return {
        "method": method,
        "gate": gate,
        "default_far": 0.01,
        "curve": {"sizes": list(SIZES), "fars": list(FARS), "thresholds": table},
        "calibrated_on": "LFW peopleDevTrain.txt people only (4,038 people): galleries of 10, 158 and 1,000 of "
                         "them (up to 5 images each, several random draws), strangers = all their other images",
        "embeddings": "dlib-resnet.v1 --flip, View 2 pipeline (align --faces center-only --detector hog+cnn "
                      "--fallback center)",
        "command": "python benchmarks/identify_lfw.py --calibrate",
    }


# ------------------------------------------------------------------ the gate ideas

BASELINE_GATE = {"basis": "nearest"}
# (label, method, gate): every idea of the issue for the unknown gate, measured on the calibration people.
VARIANTS = [
    ("closest face, its distance (today's baseline)", "nearest", {"basis": "nearest"}),
    ("closest face, margin a=0.5 (the issue's quick check)", "nearest", {"basis": "nearest", "margin": 0.5}),
    ("closest face, margin a=0.25", "nearest", {"basis": "nearest", "margin": 0.25}),
    ("closest face, cohort of 3, a=0.5", "nearest", {"basis": "nearest", "margin": 0.5, "cohort": 3}),
    ("closest face, own spread b=0.5", "nearest", {"basis": "nearest", "spread": 0.5}),
    ("closest face, z-norm against the 10 nearest others", "nearest", {"basis": "nearest", "znorm": 10}),
    ("closest face, z-norm against the 50 nearest others", "nearest", {"basis": "nearest", "znorm": 50}),
    ("k-NN vote (k=3), closest-face distance", "knn", {"basis": "nearest"}),
    ("linear SVM, closest-face distance", "svm", {"basis": "nearest"}),
    ("mean face, its distance", "mean", {"basis": "mean"}),
    ("mean face, margin a=0.25", "mean", {"basis": "mean", "margin": 0.25}),
    ("mean face, margin a=0.5", "mean", {"basis": "mean", "margin": 0.5}),
    ("mean face, margin a=1", "mean", {"basis": "mean", "margin": 1.0}),
    ("mean face, cohort of 3, a=0.5", "mean", {"basis": "mean", "margin": 0.5, "cohort": 3}),
    ("mean face, cohort of 10, a=0.25", "mean", {"basis": "mean", "margin": 0.25, "cohort": 10}),
    ("mean face, z-norm against the 10 nearest others", "mean", {"basis": "mean", "znorm": 10}),
    ("mean face, own spread b=0.25", "mean", {"basis": "mean", "spread": 0.25}),
    ("mean face, own spread b=0.5", "mean", {"basis": "mean", "spread": 0.5}),
    ("mean face, margin a=0.5 + spread b=0.25", "mean", {"basis": "mean", "margin": 0.5, "spread": 0.25}),
    ("mean face, margin a=0.5 + spread b=0.5", "mean", {"basis": "mean", "margin": 0.5, "spread": 0.5}),
    ("mean face, cohort of 3 a=0.5 + spread b=0.5", "mean",
     {"basis": "mean", "margin": 0.5, "cohort": 3, "spread": 0.5}),
    ("k-NN vote (k=3), mean-face gate a=0.5 + b=0.5", "knn", {"basis": "mean", "margin": 0.5, "spread": 0.5}),
    ("linear SVM, mean-face gate a=0.5 + b=0.5", "svm", {"basis": "mean", "margin": 0.5, "spread": 0.5}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="work folder: reads WORK/lfw-all/reps; --quick makes WORK/identify-lfw-quick")
    parser.add_argument("--reps", type=Path, help="represent output of all LFW images (default WORK/lfw-all/reps; with --quick: use it instead of "
                        "making a small one)")
    parser.add_argument("--calibrate", action="store_true", help="recompute and print the operating points")
    parser.add_argument("--variants", action="store_true", help="measure every gate idea on the calibration people")
    parser.add_argument("--quick", action="store_true", help="test people only, the headline figures")
    parser.add_argument("--index", action="store_true",
                        help="also measure with the search index shortlisting people (identify does so on "
                        "large galleries): the figures should not change")
    parser.add_argument("--flip-check", type=Path, metavar="NOFLIP_REPS",
                        help="a represent output WITHOUT --flip of some LFW people (e.g. the test people): compare "
                        "the flip average with plain embeddings on the protocol restricted to those people")
    args = parser.parse_args()
    started = time.perf_counter()
    other_modes = args.variants or args.calibrate or args.flip_check
    if args.quick and other_modes:
        parser.error("--quick measures the default figures only; --variants, --calibrate and --flip-check need "
                     "the embeddings of all LFW")
    if args.quick and args.reps is None:
        reps_dir = quick_reps(args.work / "identify-lfw-quick")
    else:
        reps_dir = args.reps or args.work / "lfw-all" / "reps"
        if not (reps_dir / "meta.json").is_file():
            raise SystemExit(missing_reps(reps_dir, args.quick, not other_modes))
    faces = load(reps_dir)
    train = read_people(DATA / "peopleDevTrain.txt") & set(faces.people)
    test = set(faces.people) - train
    record = get_record("dlib-resnet.v1")
    curve = operating_curve(record)
    gate = curve.gate if curve else BASELINE_GATE
    method = (record.operating_points.get("identify") or {}).get("method", "mean")

    if args.variants or args.calibrate:
        p = protocol(faces, train)
        print(f"Gate ideas on the calibration people (peopleDevTrain): {p.enrolment.size} known, "
              f"{len(p.queries)} queries, {len(p.strangers)} strangers\n")
        print("| variant | rank-1 | DIR @ FAR=1 % | DIR @ FAR=0.1 % |\n|---|---:|---:|---:|")
        best = None
        for label, v_method, g in VARIANTS:
            f = figures(p, v_method, g, threshold=PAIR_THRESHOLD)
            print(f"| {label} | {f['rank1']:.4f} | {f['dir@0.01']:.4f} | {f['dir@0.001']:.4f} |")
            merit = f["dir@0.01"] + f["dir@0.001"]
            if best is None or merit > best[0] + 1e-12:
                best = (merit, label, v_method, g)
        print(f"\nKept (highest DIR @ 1 % + DIR @ 0.1 % on these people): {best[1]}")
        if args.calibrate:
            points = calibrate(faces, train, best[2], best[3])
            print("\nDLIB_IDENTIFY_POINTS = " + json.dumps(points, indent=4))
        return
    if args.flip_check:
        if not (args.flip_check / "meta.json").is_file():
            raise SystemExit(f"{args.flip_check} holds no embeddings; make them with `facenet represent ALIGNED "
                             f"{args.flip_check}` (no --flip) on some aligned LFW people, e.g. the test people.")
        plain = load(args.flip_check)
        names = set(plain.people) & set(faces.people)
        print(f"Flip average vs plain embeddings, protocol on the {len(names)} people of {args.flip_check} "
              f"(--method {method}, gate {json.dumps(gate)}; DIR thresholds read off the strangers)\n")
        print("| embeddings | rank-1 | DIR @ FAR=1 % | DIR @ FAR=0.1 % |\n|---|---:|---:|---:|")
        for label, source in (("represent --flip", faces), ("represent (no flip)", plain)):
            p = protocol(source, names)
            f = figures(p, method, gate, threshold=0.0)
            print(f"| {label} | {f['rank1']:.4f} | {f['dir@0.01']:.4f} | {f['dir@0.001']:.4f} |")
        return

    sets = [("test people (disjoint from calibration)", test)]
    if not args.quick:
        sets.append(("all LFW people (the issue's protocol)", set(faces.people)))
    for label, names in sets:
        p = protocol(faces, names)
        base = figures(p, "nearest", BASELINE_GATE, threshold=PAIR_THRESHOLD)
        ours = figures(p, method, gate, curve=curve)
        print(f"\n### {label}: {p.enrolment.size} known people ({len(p.enrolment.face_ids)} faces), "
              f"{len(p.queries)} queries, {len(p.strangers)} strangers\n")
        print(f"| figure | baseline (closest face, pair threshold 0.182) | ours (--method {method}, gate "
              + json.dumps(gate) + ") |")
        print("|---|---:|---:|")
        print(f"| closed-set rank-1 | {base['rank1']:.4f} | {ours['rank1']:.4f} |")
        if not args.quick:
            print(f"| DIR @ FAR=1 % | {base['dir@0.01']:.4f} | {ours['dir@0.01']:.4f} |")
            print(f"| DIR @ FAR=0.1 % | {base['dir@0.001']:.4f} | {ours['dir@0.001']:.4f} |")
        print(f"| strangers named at the default operating point | {base['strangers_named']:.4f} "
              f"(threshold {base['threshold']:.3f}) | {ours['strangers_named']:.4f} (FAR 1 %, threshold "
              f"{ours['threshold']:.4f} for {p.enrolment.size} people) |")
        print(f"| DIR at the default operating point | {base['dir_at_point']:.4f} | {ours['dir_at_point']:.4f} |")
        calibrated = per_gallery_point(faces, names, method, gate, curve)
        if calibrated is not None:
            print(f"| per-gallery calibration (shipped stranger cohort; its people left out of the strangers): "
                  f"strangers named / DIR at FAR 1 % | | {calibrated['strangers_named']:.4f} / "
                  f"{calibrated['dir_at_point']:.4f} (threshold {calibrated['threshold']:.4f}) |")
        if not args.quick:
            for other in ("mean", "nearest", "knn", "svm"):
                if other == method:
                    continue
                f = figures(p, other, gate, curve=curve)
                print(f"| --method {other}: rank-1 / DIR@1 % / DIR@0.1 % / strangers named | | {f['rank1']:.4f} / "
                      f"{f['dir@0.01']:.4f} / {f['dir@0.001']:.4f} / {f['strangers_named']:.4f} |")
            for far in (0.001, 0.1):
                f = figures(p, method, gate, curve=curve, far=far)
                print(f"| --far {far:g}: strangers named / DIR | | {f['strangers_named']:.4f} / "
                      f"{f['dir_at_point']:.4f} |")
        if args.index:
            for m in (method, "nearest", "knn"):
                exact = ours if m == method else figures(p, m, gate, curve=curve)
                indexed = figures(p, m, gate, curve=curve, index=True)
                keys = ("rank1", "dir@0.01", "dir@0.001", "strangers_named", "dir_at_point")
                same = all(abs(exact[k] - indexed[k]) < 1e-12 for k in keys)
                print(f"| --method {m} with the search index: rank-1 / DIR@1 % / DIR@0.1 % / strangers named / "
                      f"DIR at the point | | {' / '.join(f'{indexed[k]:.4f}' for k in keys)} "
                      f"({'identical to exact' if same else 'exact: ' + ' / '.join(f'{exact[k]:.4f}' for k in keys)}) |")
    print(f"\n{time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
