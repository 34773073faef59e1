"""How fast our PyTorch copy of dlib's ResNet embeds faces, against dlib itself and the CPU.

    python benchmarks/embed_speed.py [--faces 64] [--threads 1] [--repeats 5] [--data DIR]

On real LFW chips made with dlib: ms per face at batch 1 and batch 32, ours vs dlib's
compute_face_descriptor (single chip, and its list-of-chips batch call). Then the network's
achieved FLOP/s (convolutions and fc, counted analytically) against a large fp32 matrix multiply
timed alternately with it in the same run. Thread counts are fixed before numpy, torch or dlib load their pools.
Every figure is the median over --repeats runs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=64, help="number of LFW chips to embed")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and BLAS (dlib-bin's CPU build has no BLAS and runs on one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("FACENET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--variants", action="store_true",
                        help="also time contiguous (NCHW) input, mkldnn off and torch.jit.trace")
    return parser.parse_args()


ARGS = parse_args()
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facenet_cli import resources  # noqa: E402
from facenet_cli.nets.dlib_resnet import conv_flops, load_dlib_resnet  # noqa: E402
from tests._dlib_chips import lfw_chips  # noqa: E402

torch.set_num_threads(ARGS.threads)


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: allocator, mkldnn primitive caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_runner(model, batch: torch.Tensor, batch_size: int):
    def run():
        with torch.inference_mode():
            for start in range(0, len(batch), batch_size):
                model(batch[start:start + batch_size])
    return run


def interleaved_rates(network_run, network_flops: float, repeats: int, size: int = 2048) -> tuple[float, float, float]:
    """FLOP/s of the network and of a size x size fp32 matmul, timed alternately so that both
    see the same load from other processes; returns the medians and the median per-pair ratio."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    matmuls = max(1, round(network_flops / (2 * size**3)))  # about as long as one network run
    network_run()
    torch.mm(a, b)
    network_rates, matmul_rates, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        network_run()
        network_rate = network_flops / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(matmuls):
            torch.mm(a, b)
        matmul_rate = matmuls * 2 * size**3 / (time.perf_counter() - start)
        network_rates.append(network_rate)
        matmul_rates.append(matmul_rate)
        ratios.append(network_rate / matmul_rate)
    return statistics.median(network_rates), statistics.median(matmul_rates), statistics.median(ratios)


def main() -> None:
    import dlib

    lfw = ARGS.data / "lfw" / "deepfunneled"
    if not lfw.is_dir():
        sys.exit(f"LFW images not found at {lfw}; pass --data or set FACENET_DATA.")
    chips = lfw_chips(lfw, ARGS.faces)
    n = len(chips)
    dat = resources.dlib_model_path(resources.DLIB_RESNET)
    reference = dlib.face_recognition_model_v1(str(dat))
    model = load_dlib_resnet(dat).to(memory_format=torch.channels_last)
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()  # channels_last strides

    rows = []  # (label, ms per face ours, ms per face dlib)
    for batch_size in (1, 32):
        ours = median_seconds(torch_runner(model, batch, batch_size), ARGS.repeats) / n
        if batch_size == 1:
            theirs = median_seconds(
                lambda: [reference.compute_face_descriptor(chip, num_jitters=0) for chip in chips], ARGS.repeats) / n
        else:
            theirs = median_seconds(
                lambda: [reference.compute_face_descriptor(chips[s:s + batch_size], num_jitters=0)
                         for s in range(0, n, batch_size)], ARGS.repeats) / n
        rows.append((f"batch {batch_size}", ours * 1e3, theirs * 1e3))

    print(f"{n} LFW chips, {ARGS.threads} thread(s), median of {ARGS.repeats}, torch {torch.__version__}, "
          f"dlib {dlib.__version__} (BLAS {'on' if dlib.DLIB_USE_BLAS else 'off'})")
    print(f"{'':10} {'ours ms/face':>13} {'dlib ms/face':>13} {'dlib/ours':>10}")
    for label, ours_ms, dlib_ms in rows:
        print(f"{label:10} {ours_ms:13.2f} {dlib_ms:13.2f} {dlib_ms / ours_ms:10.2f}x")

    flops_per_face = conv_flops(model)
    network_rate, matmul_rate, ratio = interleaved_rates(
        torch_runner(model, batch, 32), flops_per_face * n, ARGS.repeats)
    print(f"\nnetwork: {flops_per_face / 1e9:.3f} GFLOP per face (convolutions + fc)")
    print(f"batch 32, timed alternately with fp32 matmul 2048x2048 (median of {ARGS.repeats} pairs):")
    print(f"  network {network_rate / 1e9:.1f} GFLOP/s, matmul {matmul_rate / 1e9:.1f} GFLOP/s, "
          f"network/matmul = {ratio:.2f}")

    if ARGS.variants:
        print("\nvariants at batch 32 (ms/face):")
        variants = {"channels_last (default)": (model, batch)}
        variants["contiguous NCHW"] = (load_dlib_resnet(dat), batch.contiguous())
        with torch.inference_mode():
            variants["torch.jit.trace+freeze"] = (
                torch.jit.freeze(torch.jit.trace(model, batch[:32])), batch)
        for label, (net, inputs) in variants.items():
            ms = median_seconds(torch_runner(net, inputs, 32), ARGS.repeats) / n * 1e3
            print(f"  {label:26} {ms:7.2f}")
        with torch.backends.mkldnn.flags(enabled=False):
            ms = median_seconds(torch_runner(model, batch, 32), ARGS.repeats) / n * 1e3
        print(f"  {'mkldnn disabled':26} {ms:7.2f}")


if __name__ == "__main__":
    main()
