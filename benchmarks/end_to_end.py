"""Raw LFW photos to embeddings: our pipeline against face_recognition's default one, side by side.

    python benchmarks/end_to_end.py [--images 1000] [--repeats 1] [--precision auto|fp32|bf16|int8] [--detector NAME] [--sequential] [--quick]

Both sides get the same images (`lfw_sample`) and two processes:

- ours: what `facenet represent RAW OUT --photos --workers 2` runs: `represent_photos` with the
  dlib-resnet.v1 record's spec (AlignJob with the CLI's default detector, upsample auto, largest
  face; the Embedder at `--precision auto`, what the CLI runs on this CPU): with a
  worker per core, each of the 2 align processes embeds its own chunks of 16 crops (one torch
  thread; `represent.WorkerEmbedding`) and hands back vectors, then this process writes the
  folder (no PNG read back).
- theirs: face_recognition's defaults, called on dlib directly (the package imports
  pkg_resources): per image, load RGB with PIL, HOG detector at upsample 1, and for every face
  found the 5-point shape predictor and `compute_face_descriptor(img, shape, num_jitters=1)`;
  2 processes (multiprocessing, fork), each loading the models once.

- sequential (`--sequential`): the pipeline before the overlap: `align_tree` in 2 processes,
  then `represent_tree` reading the PNGs back (torch's default threads).

`--precision` sets our Embedder's precision, `--detector` our align job's detector (both of our
sides; default: the CLI's defaults, `hog-onet` and `auto`; `hog` is dlib's HOG with its 5-point
predictor; `mtcnn` is the CNN cascade with its own five landmarks). The CPU's model name and the
class `--precision auto` sees are printed with the figures.

Each run is a fresh Python process (so that peak RSS is that side's alone); the sides alternate
(ours first on even repeats, theirs first on odd ones) so that load from other jobs hits both
alike. Timed from before the models load to the last embedding (imports excluded; the process's
whole wall time is shown too). Figures are medians over --repeats. `--quick`: 8 images, one
repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "dlib-resnet.v1"
WORKERS = 2


def peak_rss_mib() -> dict[str, float]:
    """ru_maxrss of this process and of its largest waited-for child (Linux reports KiB)."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


# ---------------------------------------------------------------- ours

def cpu_name() -> str:
    """The CPU's model name and the class `--precision auto` sees (figures hold for that CPU)."""
    from facenet_cli.nets.precision import cpu_class

    try:
        with open("/proc/cpuinfo") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "unknown")
    except OSError:
        name = "unknown"
    return f"{name} ({cpu_class()})"


def our_result(aligned, reps, marks: tuple[float, float, float, float], embedder_precision: str = "") -> dict:
    """One of our runs as the parent reads it: times (start, model loaded, aligned, done), counts."""
    import torch

    t0, t1, t2, t3 = marks
    counts = aligned.counts
    return {"seconds": t3 - t0, "load": t1 - t0, "align": t2 - t1, "embed": t3 - t2,
            "images": aligned.total, "faces": reps.count,
            "missed": counts["no-face"] + counts["multiple-faces"] + counts["unreadable"],
            "counts": counts, "align_stage_ms": aligned.stage_ms(),
            "missed_files": sorted(o.input for o in aligned.outcomes
                                   if o.status in ("no-face", "multiple-faces", "unreadable")),
            "precision": embedder_precision, "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "rss_mib": peak_rss_mib()}


def run_ours(raw: Path, out: Path, precision: str = "fp32", detector: str = "hog") -> dict:
    import torch  # noqa: F401 (imports are not timed, on either side: theirs imports dlib first)

    from facenet_cli.nets.embedder import Embedder
    from facenet_cli.models.hub import resolve_model
    from facenet_cli.align.job import AlignJob
    from facenet_cli.pipeline.represent import represent_photos

    t0 = time.perf_counter()
    embedder = Embedder(resolve_model(MODEL), device="cpu", precision=precision, engine="torch")
    t1 = time.perf_counter()
    marks = {}
    job = AlignJob(spec=embedder.record.align, detector=detector)
    class EmbeddingStarts:  # the progress protocol: the Embedding stage starts when the alignment ends
        def start(self, total):
            pass

        def advance(self, count=1):
            pass

        def stage(self, name, total):
            if name == "Embedding":
                marks.setdefault("aligned", time.perf_counter())

    aligned, reps = represent_photos(raw, out, embedder, job, workers=WORKERS, progress=EmbeddingStarts())
    t3 = time.perf_counter()
    t2 = marks.get("aligned", t3)
    return our_result(aligned, reps, (t0, t1, t2, t3), embedder.precision)


# ---------------------------------------------------------------- the pipeline before: align, then represent

def run_sequential(raw: Path, out: Path, precision: str = "fp32", detector: str = "hog") -> dict:
    import torch  # noqa: F401 (not timed, as in run_ours)

    from facenet_cli.nets.embedder import Embedder
    from facenet_cli.models.hub import resolve_model
    from facenet_cli.align.job import AlignJob, align_tree
    from facenet_cli.pipeline.represent import represent_tree

    t0 = time.perf_counter()
    embedder = Embedder(resolve_model(MODEL), device="cpu", precision=precision)
    t1 = time.perf_counter()
    job = AlignJob(spec=embedder.record.align, detector=detector)
    aligned = align_tree(raw, out / "aligned", job, workers=WORKERS)
    t2 = time.perf_counter()
    reps = represent_tree(out / "aligned", out, embedder)
    t3 = time.perf_counter()
    return our_result(aligned, reps, (t0, t1, t2, t3), embedder.precision)


# ---------------------------------------------------------------- theirs (face_recognition's defaults)

_DLIB = None


def _init_theirs() -> None:
    import dlib

    from facenet_cli.models import resources

    global _DLIB
    _DLIB = (dlib.get_frontal_face_detector(),
             dlib.shape_predictor(str(resources.dlib_model_path(resources.SHAPE_PREDICTOR_5))),
             dlib.face_recognition_model_v1(str(resources.dlib_model_path(resources.DLIB_RESNET))))


def _encode_theirs(path: str):
    """face_recognition.load_image_file + face_encodings(img) with its defaults."""
    import numpy as np
    from PIL import Image

    detector, predictor, encoder = _DLIB
    img = np.array(Image.open(path).convert("RGB"))          # load_image_file(mode="RGB")
    rects = detector(img, 1)                                  # _raw_face_locations(img, 1, "hog")
    shapes = [predictor(img, rect) for rect in rects]         # model="small": 5-point
    vectors = [np.array(encoder.compute_face_descriptor(img, shape, 1)) for shape in shapes]
    areas = [r.width() * r.height() for r in rects]
    largest = vectors[int(np.argmax(areas))].astype(np.float32) if vectors else None
    return len(vectors), largest


def run_theirs(raw: Path, out: Path) -> dict:
    from multiprocessing import get_context

    import dlib
    import numpy as np

    files = sorted(str(p) for p in raw.glob("*/*.jpg"))
    chunk = max(1, min(16, len(files) // (WORKERS * 4) or 1))  # as align_tree chunks
    t0 = time.perf_counter()
    with get_context("fork").Pool(WORKERS, initializer=_init_theirs) as pool:
        results = list(pool.imap(_encode_theirs, files, chunksize=chunk))
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    keep = [(Path(f).relative_to(raw).with_suffix("").as_posix(), v) for f, (_, v) in zip(files, results)
            if v is not None]
    np.save(out / "largest.npy", np.stack([v for _, v in keep]) if keep else np.zeros((0, 128), np.float32))
    (out / "largest.json").write_text(json.dumps([k for k, _ in keep]))
    return {"seconds": seconds, "images": len(files), "faces": sum(n for n, _ in results),
            "missed": sum(1 for n, _ in results if n == 0),
            "multi": sum(1 for n, _ in results if n > 1),
            "missed_files": [Path(f).relative_to(raw).as_posix() for f, (n, _) in zip(files, results) if n == 0],
            "dlib": dlib.__version__, "rss_mib": peak_rss_mib()}


# ---------------------------------------------------------------- the comparison

def agreement(ours_dir: Path, theirs_dir: Path) -> tuple[int, float, float]:
    """Faces both sides embedded: count, median and min cosine of ours vs theirs' largest face."""
    import numpy as np

    ours = np.load(ours_dir / "reps.npy")
    names = [Path(line.split(",", 1)[1].strip()) for line in (ours_dir / "labels.csv").read_text().splitlines()]
    ours_by = {f"{p.parent.name}/{p.stem}": v for p, v in zip(names, ours)}
    theirs = np.load(theirs_dir / "largest.npy")
    keys = json.loads((theirs_dir / "largest.json").read_text())
    pairs = [(ours_by[k], t) for k, t in zip(keys, theirs) if k in ours_by]
    if not pairs:
        return 0, float("nan"), float("nan")
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return len(pairs), float(np.median(cos)), float(cos.min())


def child(side: str, raw: Path, out: Path, precision: str, detector: str = "hog") -> None:
    shutil.rmtree(out, ignore_errors=True)
    if side == "ours":
        result = run_ours(raw, out, precision, detector)
    elif side == "sequential":
        result = run_sequential(raw, out, precision, detector)
    else:
        result = run_theirs(raw, out)
    print("RESULT " + json.dumps(result))


def launch(side: str, raw: Path, out: Path, precision: str = "fp32", detector: str = "hog") -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--raw", str(raw), "--out", str(out),
                           "--precision", precision, "--detector", detector],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stdout}\n{proc.stderr}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["wall"] = wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the side's process and its workers, start-up included: what a side costs
    # when other jobs' load makes wall time wander.
    result["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def build_parser() -> argparse.ArgumentParser:
    from facenet_cli.detect import detector_names
    from facenet_cli.pipeline.face_pipeline import LIBRARY_DEFAULTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="8 images, one repeat: same steps, same table, figures not quotable")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto",
                        help="our embedder's precision (Embedder(precision=...)); default: auto, the CLI's default")
    parser.add_argument("--detector", choices=detector_names(builtin_only=True), default=LIBRARY_DEFAULTS["detector"],
                        help="our align job's detector (both of our sides; default: the CLI's); theirs is always "
                             "HOG with five filters")
    parser.add_argument("--sequential", action="store_true",
                        help="also run the pipeline before the overlap (align_tree, then represent_tree from the PNGs)")
    parser.add_argument("--side", choices=("ours", "sequential", "theirs"), help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.images, args.repeats = 8, 1
    if args.side:
        child(args.side, args.raw, args.out, args.precision, args.detector)
        return

    sys.path.insert(0, str(HERE))
    from _common import lfw_sample, make_tree, median

    # No torch or dlib here: a child's ru_maxrss starts from this process's RSS at the fork.
    work = Path(tempfile.mkdtemp(prefix="facenet-e2e-"))
    raw = make_tree(lfw_sample(args.images), work / "raw")
    load_before = os.getloadavg()
    sides = ("ours", "sequential", "theirs") if args.sequential else ("ours", "theirs")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        order = sides if repeat % 2 == 0 else sides[::-1]
        for side in order:
            runs[side].append(launch(side, raw, work / side, args.precision, args.detector))
            r = runs[side][-1]
            print(f"  repeat {repeat + 1} {side:6}: {r['images'] / r['seconds']:6.2f} images/s "
                  f"({r['seconds']:.1f} s; load {os.getloadavg()[0]:.2f})", flush=True)
    load_after = os.getloadavg()
    both, median_cos, min_cos = agreement(work / "ours", work / "theirs")
    shutil.rmtree(work, ignore_errors=True)

    def med(side: str, key: str) -> float:
        return median([r[key] for r in runs[side]])

    ours_rate = median([r["images"] / r["seconds"] for r in runs["ours"]])
    theirs_rate = median([r["images"] / r["seconds"] for r in runs["theirs"]])
    o, t = runs["ours"][-1], runs["theirs"][-1]
    n = o["images"]
    print(f"\nraw LFW photos -> {MODEL} embeddings, {n} images, {WORKERS} processes each, "
          f"median of {args.repeats}; {os.cpu_count()} CPUs, torch {o['torch']} "
          f"({o['torch_threads']} threads), dlib {t['dlib']}")
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"{'':34} {'images/s':>9} {'seconds':>8} {'process s':>10} {'faces':>6} {'missed':>7}")
    print(f"{'ours (represent_photos)':34} {ours_rate:9.2f} {med('ours', 'seconds'):8.1f} "
          f"{med('ours', 'wall'):10.1f} {o['faces']:6d} {o['missed']:7d}")
    print(f"{'theirs (face_recognition defaults)':34} {theirs_rate:9.2f} {med('theirs', 'seconds'):8.1f} "
          f"{med('theirs', 'wall'):10.1f} {t['faces']:6d} {t['missed']:7d}")
    print(f"ratio ours / theirs: {ours_rate / theirs_rate:.2f}x (target >= 10x)")
    cpu = {side: median([r["cpu"] for r in runs[side]]) for side in runs}
    print("process CPU seconds (all processes, start-up included): "
          + ", ".join(f"{side} {value:.1f}" for side, value in cpu.items())
          + f"; CPU ratio theirs / ours: {cpu['theirs'] / cpu['ours']:.2f}x"
          + (f", theirs / sequential: {cpu['theirs'] / cpu['sequential']:.2f}x" if "sequential" in cpu else ""))
    if "sequential" in runs:
        rate = median([r["images"] / r["seconds"] for r in runs["sequential"]])
        v = runs["sequential"][-1]
        print(f"sequential (align_tree, then represent_tree from the PNGs; torch {v['torch_threads']} threads): "
              f"{rate:.2f} images/s, {v['faces']} faces, {v['missed']} missed; ratio sequential / theirs: "
              f"{rate / theirs_rate:.2f}x; ours / sequential: {ours_rate / rate:.2f}x")
    print(f"our precision: {args.precision} ({o['precision']} here); our detector: {args.detector}; CPU: {cpu_name()}")
    print(f"ours, by stage (median s): load model {med('ours', 'load'):.2f}, align (embedding alongside) "
          f"{med('ours', 'align'):.1f}, rest of the embedding and writing {med('ours', 'embed'):.1f}")
    print("ours, align ms per image per worker: "
          + ", ".join(f"{k} {v:.1f}" for k, v in o["align_stage_ms"].items()))
    print(f"ours, align outcomes: {o['counts']}")
    print(f"theirs: {t['multi']} images with more than one face (all encoded); "
          f"missed = images with no face found")
    same = "the same images" if o["missed_files"] == t["missed_files"] else "different images"
    print(f"missed, {same}: ours {o['missed_files']}; theirs {t['missed_files']}")
    print(f"peak RSS ours: main {o['rss_mib']['self']:.0f} MiB, largest worker {o['rss_mib']['children']:.0f} MiB; "
          f"theirs: main {t['rss_mib']['self']:.0f} MiB, largest worker {t['rss_mib']['children']:.0f} MiB")
    print(f"agreement on {both} faces both embedded (ours vs theirs' largest face): "
          f"cosine median {median_cos:.4f}, min {min_cos:.4f}")


if __name__ == "__main__":
    main()
