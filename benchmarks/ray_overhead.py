"""What `--executor ray` costs against the local executor, on the same LFW images, side by side.

    python benchmarks/ray_overhead.py [--images 1000] [--repeats 2] [--cpus 2] [--address ADDR] [--quick]

Runs `align_tree` and then `represent_tree` on the same photos locally (`--cpus` processes for
align, torch's own threads for the network) and on Ray (a one-node cluster started here with
`--cpus` CPUs, or the running one at `--address`), `--repeats` times in the order local, Ray,
Ray, local, ... (so a drift in the machine's load hits both alike), outputs compared (crops
byte for byte, the report, embeddings by the largest difference). Prints the median seconds,
images/s and the ratio Ray / local per stage, and the machine's load average around the run.
The Ray figures include what a user waits for: tasks and actors scheduled, the actors loading
the network, the first repeat also the worker processes starting and loading the detector.
The cluster's own start is printed apart. Then, on paper, what a million photos would take on N nodes from the measured
per-image costs (CPU-seconds per image on Ray, and the driver's own CPU time per file, which
does not shrink with more nodes). `--quick`: 24 images.

RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set for the cluster started here so that its traffic
stays on 127.0.0.1 (Ray 2.60 on Linux otherwise uses the machine's network address).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import QUICK_HELP, lfw_sample, make_tree, median

from facenet_cli.nets.embedder import Embedder
from facenet_cli.models.hub import resolve_model
from facenet_cli.align.job import AlignJob, align_tree
from facenet_cli.executors.ray import RayExecutor, import_ray
from facenet_cli.pipeline.represent import represent_tree
from facenet_cli.formats.reps import read_reps

MILLION = 1_000_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="local processes and the Ray cluster's CPUs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--address", help="a running Ray cluster instead of one started here")
    parser.add_argument("--cores-per-node", type=int, default=16, help="for the million-photo estimate")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return parser


def timed(run):
    """(result, wall seconds, this process's CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def crops(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.images, args.repeats = 24, 1
    ray = import_ray()
    work = Path(tempfile.mkdtemp(prefix="facenet-ray-bench-"))
    raw = make_tree(lfw_sample(args.images), work / "raw")
    record = resolve_model("dlib-resnet.v1")
    job = AlignJob(spec=record.align)

    load_before = os.getloadavg()[0]
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    started = time.perf_counter()
    if args.address:
        ray.init(address=args.address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        ray.init(num_cpus=args.cpus, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    cluster_s = time.perf_counter() - started
    cpus = int(ray.cluster_resources().get("CPU", 0))
    seconds = {key: [] for key in ("local align", "local represent", "ray align", "ray represent")}
    driver_cpu: list[float] = []

    def local_run(out: Path):
        # As `facenet align RAW OUT --workers CPUS` and `facenet represent ALIGNED OUT` run.
        report, wall, _ = timed(lambda: align_tree(raw, out / "aligned", job, workers=args.cpus))
        seconds["local align"].append(wall)
        embedder = Embedder(record, device="cpu", batch_size=args.batch_size)
        _, wall, _ = timed(lambda: represent_tree(out / "aligned", out / "reps", embedder))
        seconds["local represent"].append(wall)
        return report

    def ray_run(out: Path):
        # As `--executor ray`: the driver checks the weights only, the actors load the network.
        with RayExecutor() as executor:
            report, wall, cpu_align = timed(lambda: align_tree(raw, out / "aligned", job, executor=executor))
            seconds["ray align"].append(wall)
            driver = Embedder(record, device="cpu", batch_size=args.batch_size, engine="auto")
            _, wall, cpu_embed = timed(lambda: represent_tree(out / "aligned", out / "reps", driver,
                                                              executor=executor))
            seconds["ray represent"].append(wall)
        driver_cpu.append(cpu_align + cpu_embed)
        return report

    try:
        for repeat in range(args.repeats):
            for name in (("local", "ray") if repeat % 2 == 0 else ("ray", "local")):
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                if name == "local":
                    local_align = local_run(out)
                else:
                    ray_align = ray_run(out)
    finally:
        ray.shutdown()
    load_after = os.getloadavg()[0]
    local_align_s, local_embed_s = median(seconds["local align"]), median(seconds["local represent"])
    ray_align_s, ray_embed_s = median(seconds["ray align"]), median(seconds["ray represent"])
    driver_cpu_s = median(driver_cpu)  # align and represent together

    same_crops = crops(work / "ray" / "aligned") == crops(work / "local" / "aligned")
    same_report = ((work / "ray" / "aligned" / "align-report.csv").read_bytes()
                   == (work / "local" / "aligned" / "align-report.csv").read_bytes())
    ours, theirs = read_reps(work / "ray" / "reps"), read_reps(work / "local" / "reps")
    largest = float(np.abs(ours.embeddings - theirs.embeddings).max())
    faces = len(theirs.paths)
    shutil.rmtree(work, ignore_errors=True)

    images = local_align.total
    print(f"executor ray vs local, {images} LFW images, {args.cpus} local processes / "
          f"{cpus} Ray CPUs, batch {args.batch_size}")
    print(f"Ray cluster start (not in the figures below): {cluster_s:.1f} s; median of {args.repeats} repeats; "
          f"load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"{'stage':<10} {'local s':>9} {'ray s':>9} {'local img/s':>12} {'ray img/s':>10} {'ray/local':>10}")
    for stage, count, here, there in (("align", images, local_align_s, ray_align_s),
                                      ("represent", faces, local_embed_s, ray_embed_s)):
        print(f"{stage:<10} {here:>9.1f} {there:>9.1f} {count / here:>12.1f} {count / there:>10.1f} "
              f"{there / here:>9.2f}x")
    total_local, total_ray = local_align_s + local_embed_s, ray_align_s + ray_embed_s
    print(f"{'both':<10} {total_local:>9.1f} {total_ray:>9.1f} {images / total_local:>12.1f} "
          f"{images / total_ray:>10.1f} {total_ray / total_local:>9.2f}x")
    print(f"same outputs: crops byte-identical {same_crops}, report identical {same_report}, "
          f"largest embedding difference {largest:.2e} ({faces} faces); counts {ray_align.counts}")

    # On paper: CPU-seconds per image on the cluster (all its CPUs busy for the wall time),
    # spread over N nodes, plus the driver's per-file CPU time, which more nodes do not divide.
    align_cpu_s = ray_align_s * cpus / images
    embed_cpu_s = ray_embed_s * cpus / max(faces, 1)
    driver_s = driver_cpu_s / images
    print(f"per image on Ray: align {align_cpu_s * 1000:.0f} CPU-ms, represent {embed_cpu_s * 1000:.0f} CPU-ms; "
          f"driver {driver_s * 1000:.2f} CPU-ms per file")
    print(f"a million photos, {args.cores_per_node} cores per node (CPU only):")
    print(f"{'nodes':>6} {'hours':>8}  (the driver alone needs {driver_s * MILLION / 3600:.2f} h of one core)")
    for nodes in (1, 10, 100):
        hours = max((align_cpu_s + embed_cpu_s) * MILLION / (nodes * args.cores_per_node), driver_s * MILLION) / 3600
        print(f"{nodes:>6} {hours:>8.2f}")


if __name__ == "__main__":
    main()
