"""`facenet cluster` on LFW: calibrate the threshold on some people, measure on all, then scale.

    python benchmarks/cluster_lfw.py            # calibrate, measure 13,233 faces, then 100,000+
    python benchmarks/cluster_lfw.py --quick    # the same steps on a few dozen real faces

Protocol (written before measuring, as issue 9 asks):
1. Embeddings: the README's View 2 pipeline on all 13,233 LFW images (made here when missing):
   facenet align LFW work/lfw-all/aligned --faces center-only --detector hog+cnn --fallback center
   facenet represent work/lfw-all/aligned work/lfw-all/reps --flip
2. Calibration: only the faces of the 4,038 people of peopleDevTrain.txt (9,525 faces). Average
   linkage over the kNN graph at every threshold of a grid; the threshold with the best pairwise
   F is chosen, and the rest of the protocol never changes it.
3. Measurement at that threshold: pairwise F of clustering all 13,233 faces together, and of
   the 3,708 faces of the people outside peopleDevTrain.txt alone (never seen by step 2).
4. Scale: 105,864 faces = the 13,233 real embeddings plus 7 perturbed copies of each. Re-embedding
   7 changed crops per image (mirror, darker x0.6, brighter x1.3+20, contrast x0.6, a 7 % zoom, a
   5x4 px shift, blur + JPEG quality 40) would cost 92,631 network passes, over an hour on this
   shared 2-core CPU, so the real network embeds those 7 changes of 200 crops spread over LFW
   and measures how far a change moves an embedding; each copy is the real embedding moved
   along LFW's own within-person directions (noise with the covariance of faces around their
   person's mean) by that same mean squared distance, back on the sphere. Each run of 3 and 4
   is a fresh process, so ru_maxrss is that run's own peak.
Prints the table for the README and writes work/cluster-lfw/result.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LFW, LFW_IMAGES, QUICK_HELP, ROOT, need_lfw, people_with_images, run_facenet_here  # noqa: E402

WORK = ROOT / "work"
GRID = [round(0.05 + 0.005 * i, 3) for i in range(25)]  # 0.05 ... 0.17
VARIANTS = ("mirror", "darker", "brighter", "low-contrast", "zoom", "shift", "blur-jpeg")


def read_people(path: Path) -> set[str]:
    """The names in LFW's people*.txt (first line: a count; then `name<TAB>images`)."""
    lines = path.read_text(encoding="utf-8").split("\n")[1:]
    return {line.split("\t")[0] for line in lines if "\t" in line}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


# ------------------------------------------------------------------ embeddings

def ensure_reps(work: Path, quick: bool) -> Path:
    reps = work / "reps"
    if (reps / "meta.json").is_file():
        return reps
    need_lfw()
    raw = LFW_IMAGES
    if quick:  # a few people with several images each, plus a few people with one image
        from _common import make_tree

        files = [f for _, images in people_with_images(8)[:6] for f in images[:8]]
        files += [images[0] for _, images in people_with_images(1)[200:212]]
        raw = make_tree(files, work / "raw")
    run_facenet_here(["align", raw, work / "aligned", "--faces", "center-only", "--detector", "hog+cnn",
                      "--fallback", "center", "--workers", "2"])
    run_facenet_here(["represent", work / "aligned", reps, "--flip"])
    return reps


def variant(image: np.ndarray, name: str) -> np.ndarray:
    """One documented change of a real aligned crop (uint8 RGB, 150 x 150)."""
    import cv2

    f = image.astype(np.float32)
    if name == "mirror":
        return image[:, ::-1].copy()
    if name == "darker":
        out = f * 0.6
    elif name == "brighter":
        out = f * 1.3 + 20
    elif name == "low-contrast":
        out = (f - f.mean()) * 0.6 + f.mean()
    elif name == "zoom":  # a tighter crop: the central 93 % scaled back up
        size = image.shape[0]
        cut = int(round(size * 0.035))
        return cv2.resize(image[cut:size - cut, cut:size - cut], (size, size), interpolation=cv2.INTER_LINEAR)
    elif name == "shift":
        matrix = np.float32([[1, 0, 5], [0, 1, 4]])
        return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
    elif name == "blur-jpeg":
        blurred = cv2.GaussianBlur(image, (3, 3), 1.0)
        ok, buf = cv2.imencode(".jpg", blurred[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 40])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    else:
        raise ValueError(name)
    return np.clip(out, 0, 255).astype(np.uint8)


def variant_spread(reps, sample: int) -> dict:
    """Squared distance between a face's embedding and the real network's embedding of each of
    the 7 variants of its crop, on `sample` crops spread over LFW (what the perturbation copies)."""
    from facenet_cli import Embedder, resolve_model
    from facenet_cli.images import read_rgb

    embedder = Embedder(resolve_model(reps.meta["model"]["name"]), device="cpu", batch_size=64)
    rows = np.linspace(0, len(reps) - 1, sample).astype(int)
    distances = []
    for start in range(0, len(rows), 16):
        chunk = rows[start:start + 16]
        batch = [variant(read_rgb(reps.paths[i]), name) for i in chunk for name in VARIANTS]
        vectors = embedder.embed(batch).reshape(len(chunk), len(VARIANTS), -1)
        distances.append(((vectors - reps.embeddings[chunk][:, None, :]) ** 2).sum(-1))
    d = np.concatenate(distances)
    return {"crops": int(sample), "variants": list(VARIANTS), "mean": float(d.mean()),
            "median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
            "per_variant_mean": {name: round(float(d[:, i].mean()), 4) for i, name in enumerate(VARIANTS)}}


def perturb(embeddings: np.ndarray, people: np.ndarray, copies: int, target_mean: float, seed: int = 0):
    """`copies` new faces per real face: its embedding moved along LFW's own within-person
    directions (noise with the covariance of faces around their person's mean), scaled so that
    the mean squared distance to the original equals `target_mean`, then put back on the sphere."""
    rng = np.random.default_rng(seed)
    names, index = np.unique(people, return_inverse=True)
    means = np.zeros((len(names), embeddings.shape[1]))
    np.add.at(means, index, embeddings)
    counts = np.bincount(index)
    several = counts[index] >= 2
    deviations = embeddings[several] - (means / counts[:, None])[index[several]]
    covariance = np.cov(deviations, rowvar=False)
    values, vectors = np.linalg.eigh(covariance)
    shape = vectors * np.sqrt(np.maximum(values, 0.0))

    def make(base: np.ndarray, scale: float, noise: np.ndarray) -> np.ndarray:
        moved = base + scale * (noise @ shape.T)
        return moved / np.linalg.norm(moved, axis=1, keepdims=True)

    probe_noise = rng.standard_normal((4000, embeddings.shape[1]))
    probe = embeddings[rng.integers(0, len(embeddings), 4000)]
    low, high = 0.0, 10.0
    for _ in range(40):  # bisection on the scale: the mean distance grows with it
        mid = (low + high) / 2
        low, high = (mid, high) if ((make(probe, mid, probe_noise) - probe) ** 2).sum(1).mean() < target_mean else (low, mid)
    scale = (low + high) / 2
    out = np.empty((len(embeddings) * copies, embeddings.shape[1]), dtype=np.float32)
    for c in range(copies):
        out[c::copies] = make(embeddings, scale, rng.standard_normal(embeddings.shape))
    return out, scale


def ensure_scale_set(reps_dir: Path, out: Path, sample: int) -> tuple[Path, dict]:
    """The 13,233 real faces plus 7 perturbed copies of each (cached in `out`)."""
    done, info_file = out / "scale.npz", out / "scale.json"
    if done.is_file() and info_file.is_file():
        return done, json.loads(info_file.read_text())
    from facenet_cli import read_reps

    started = time.perf_counter()
    reps = read_reps(reps_dir)
    spread = variant_spread(reps, sample)
    people = np.array(reps.people)
    copies, scale = perturb(reps.embeddings, people, len(VARIANTS), spread["mean"])
    embeddings = np.concatenate([reps.embeddings, copies])
    names = np.concatenate([people, np.repeat(people, len(VARIANTS))])
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, len(reps), 20000), rng.integers(0, len(reps), 20000)
    different = people[a] != people[b]
    info = {"real_variant_distance": spread, "noise_scale": scale, "faces": len(embeddings),
            "perturbed_distance_mean": float(((copies[::len(VARIANTS)] - reps.embeddings) ** 2).sum(1).mean()),
            "different_people_distance_median": {
                "real": float(np.median(((reps.embeddings[a] - reps.embeddings[b]) ** 2).sum(1)[different])),
                "perturbed": float(np.median(((copies[a * len(VARIANTS)] - copies[b * len(VARIANTS) + 1]) ** 2)
                                             .sum(1)[different]))},
            "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "scale.tmp.npz"
    np.savez(tmp, embeddings=embeddings, people=names)
    tmp.replace(done)
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return done, info


# ------------------------------------------------------------------ one measured run (own process)

def measure(args) -> None:
    """Cluster one set at one threshold and print a JSON line: quality, time, peak memory."""
    from facenet_cli.recognition.cluster import block_rows_for, cluster_embeddings, pairwise_f

    if args.set.endswith(".npz"):
        data = np.load(args.set)
        embeddings, people = data["embeddings"], data["people"]
    else:
        from facenet_cli import read_reps

        reps = read_reps(args.set)
        embeddings, people = reps.embeddings, np.array(reps.people)
        if args.people_file:
            chosen = read_people(Path(args.people_file))
            keep = np.isin(people, sorted(chosen)) != args.exclude
            embeddings, people = embeddings[keep], people[keep]
    loaded = peak_rss_mb()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    labels = cluster_embeddings(embeddings, args.threshold, k=args.k)
    seconds = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    peak = peak_rss_mb()
    score = pairwise_f(people, labels)

    print(json.dumps({
        "faces": len(embeddings), "people": len(set(people.tolist())), "threshold": args.threshold,
        "k": args.k, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(loaded, 1), "block_rows": block_rows_for(len(embeddings)),
        "precision": round(score.precision, 4), "recall": round(score.recall, 4), "f": round(score.f, 4),
        "clusters": score.clusters, "unknown": score.unknown}))


def run_measure(set_path, threshold: float, k: int, people_file: Path | None = None, exclude: bool = False) -> dict:
    cmd = [sys.executable, __file__, "measure", "--set", str(set_path), "--threshold", str(threshold), "--k", str(k)]
    if people_file:
        cmd += ["--people-file", str(people_file)] + (["--exclude"] if exclude else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measuring {set_path} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the benchmark

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", nargs="?", default="all", choices=["all", "measure"])
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--no-scale", action="store_true", help="skip the 100,000-face run")
    parser.add_argument("--set"), parser.add_argument("--threshold", type=float)
    parser.add_argument("--people-file"), parser.add_argument("--exclude", action="store_true")
    args = parser.parse_args()
    if args.step == "measure":
        return measure(args)

    from facenet_cli import read_reps
    from facenet_cli.recognition.cluster import f_curve

    work = WORK / ("cluster-lfw-quick" if args.quick else "lfw-all")
    reps_dir = ensure_reps(work, args.quick)
    reps = read_reps(reps_dir)
    people = np.array(reps.people)
    dev_train = LFW / "peopleDevTrain.txt"
    if args.quick:  # half of the quick people calibrate, the other half are measured
        names = sorted(set(people.tolist()))
        calibration_people = set(names[::2])
        dev_train = work / "people-calibration.txt"
        dev_train.write_text(f"{len(calibration_people)}\n" + "".join(f"{n}\t1\n" for n in sorted(calibration_people)))
    else:
        calibration_people = read_people(dev_train)
    calibrate = np.isin(people, sorted(calibration_people))
    print(f"Calibration: {int(calibrate.sum())} faces of {len(set(people[calibrate].tolist()))} people "
          f"({dev_train.name}); measured: all {len(people)} faces, and the "
          f"{int((~calibrate).sum())} faces of the other people alone.", flush=True)

    curve = f_curve(reps.embeddings[calibrate], people[calibrate], GRID, k=args.k)
    best = max(curve, key=lambda row: (row["f"], -row["threshold"]))
    print("\n| threshold | precision | recall | pairwise F | clusters | unknown |\n|---:|---:|---:|---:|---:|---:|")
    for row in curve:
        mark = " **chosen**" if row is best else ""
        print(f"| {row['threshold']:.3f} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f']:.4f}{mark} | "
              f"{row['clusters']} | {row['unknown']} |")
    threshold = best["threshold"]

    results = {"threshold": threshold, "k": args.k, "calibration": {"people_file": dev_train.name,
               "faces": int(calibrate.sum()), "curve": curve}}
    results["all"] = run_measure(reps_dir, threshold, args.k)
    results["disjoint"] = run_measure(reps_dir, threshold, args.k, dev_train, exclude=True)
    pair_threshold = reps.meta["model"]["threshold"]
    results["at_pair_threshold"] = run_measure(reps_dir, pair_threshold, args.k)
    if not args.no_scale:
        scale, info = ensure_scale_set(reps_dir, WORK / ("cluster-100k-quick" if args.quick else "cluster-100k"),
                                       sample=8 if args.quick else 200)
        spread = info["real_variant_distance"]
        print(f"\nScale set: {info['faces']:,} faces. Real variants (the network on {spread['crops']} crops x "
              f"{len(VARIANTS)} changes): squared distance to the face's embedding mean {spread['mean']:.4f}, "
              f"median {spread['median']:.4f}, p90 {spread['p90']:.4f}; per change {spread['per_variant_mean']}. "
              f"Perturbed copies: mean {info['perturbed_distance_mean']:.4f}; median distance between different "
              f"people: real {info['different_people_distance_median']['real']:.3f}, perturbed "
              f"{info['different_people_distance_median']['perturbed']:.3f}.", flush=True)
        results["scale"] = run_measure(scale, threshold, args.k)
        results["scale_set"] = info

    print(f"\nThreshold {threshold} chosen on {dev_train.name}'s people, then fixed; k = {args.k}; "
          "each row a fresh process (peak RSS = ru_maxrss, which includes Python, numpy and the embeddings; "
          "CPU time = user + system of the clustering, which other work on the machine does not inflate).\n")
    print("| set | faces | people | pairwise precision | recall | **F** | clusters | unknown | wall time | CPU time | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("all LFW, at the calibrated threshold", "all"),
            ("LFW people outside peopleDevTrain only", "disjoint"),
            (f"all LFW at the pair threshold {pair_threshold}", "at_pair_threshold"),
            ("LFW + 7 perturbed copies per face", "scale")]
    for title, key in rows:
        if key in results:
            r = results[key]
            print(f"| {title} (threshold {r['threshold']}) | {r['faces']:,} | {r['people']:,} | {r['precision']:.4f} | "
                  f"{r['recall']:.4f} | **{r['f']:.4f}** | {r['clusters']:,} | {r['unknown']:,} | "
                  f"{r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | {r['peak_rss_mb']:.0f} MB |")
    out = WORK / ("cluster-lfw-quick" if args.quick else "cluster-lfw") / "result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.quick:
        print("\n(--quick: a few dozen faces; the figures show the steps work, they are not quotable.)")
    print(f"\nWritten: {out}")


if __name__ == "__main__":
    main()
