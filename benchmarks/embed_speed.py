"""How fast our PyTorch copy of dlib's ResNet embeds faces, against dlib itself and the CPU.

    python benchmarks/embed_speed.py [--faces 64] [--threads 1] [--repeats 5] [--data DIR] [--precision] [--engines] [--quick]

On real LFW chips made with dlib: ms per face at batch 1 and batch 32, ours vs dlib's
compute_face_descriptor (single chip, and its list-of-chips batch call). Then the network's
achieved FLOP/s (convolutions and fc, counted analytically) against a large fp32 matrix multiply
timed alternately with it in the same run. Thread counts are fixed before numpy, torch or dlib load their pools.
Every figure is the median over --repeats runs. `--quick`: 4 faces, one repeat (batch 32 is
then a batch of 4).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=64, help="number of LFW chips to embed")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and BLAS (dlib-bin's CPU build has no BLAS and runs on one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("FACENET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--variants", action="store_true",
                        help="also time contiguous (NCHW) input, mkldnn off and torch.jit.trace")
    parser.add_argument("--precision", action="store_true",
                        help="also time bf16 autocast and int8 against fp32, interleaved, through the Embedder")
    parser.add_argument("--engines", action="store_true",
                        help="also time ONNX Runtime and OpenVINO on the same network (fp32, and int8 by "
                        "ONNX Runtime's static quantisation) against ours in fp32 and int8, batch 32 "
                        "(needs `pip install -e .[bench]`)")
    parser.add_argument("--calibrate-int8", action="store_true",
                        help="measure the int8 activation ranges on 128 LFW chips and rewrite "
                        "facenet_cli/nets/dlib_resnet_int8.py, then exit")
    parser.add_argument("--quick", action="store_true",
                        help="4 faces, one repeat: same steps, same table, figures not quotable")
    return parser


# Thread counts must be fixed before numpy, torch or dlib start their pools, so the options are
# read at import when this file runs as a script (importing it, e.g. from a test, reads none).
ARGS = build_parser().parse_args() if __name__ == "__main__" else build_parser().parse_args([])
if ARGS.quick:
    ARGS.faces, ARGS.repeats = 4, 1
if __name__ == "__main__":
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(ARGS.threads)

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facenet_cli.models import resources  # noqa: E402
from facenet_cli.nets.dlib_resnet import conv_flops, load_dlib_resnet  # noqa: E402
from tests._dlib_chips import lfw_chips  # noqa: E402

if __name__ == "__main__":
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


def write_int8_calibration(lfw: Path, count: int = 128) -> None:
    """facenet_cli/nets/dlib_resnet_int8.py: the activation ranges of dlib's ResNet over `count`
    dlib chips of LFW (the first photo of the first people in name order)."""
    from facenet_cli.nets.dlib_resnet import calibrate_int8

    chips = lfw_chips(lfw, count)
    model = load_dlib_resnet(resources.dlib_model_path(resources.DLIB_RESNET)).to(memory_format=torch.channels_last)
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()
    ranges = calibrate_int8(model, [batch[i:i + 32] for i in range(0, len(batch), 32)])
    body = "".join(f"    {name!r}: [{low!r}, {high!r}],\n" for name, (low, high) in ranges.items())
    target = Path(__file__).resolve().parents[1] / "facenet_cli" / "nets" / "dlib_resnet_int8.py"
    target.write_text(
        '"""Activation ranges of dlib\'s ResNet for its int8 network, [min, max] per quantized tensor,\n'
        f'measured on {len(chips)} dlib chips of LFW (the first photo of the first people by name).\n\n'
        'Written by `python benchmarks/embed_speed.py --calibrate-int8`; do not edit by hand.\n"""\n'
        f"ACTIVATION_RANGES = {{\n{body}}}\n")
    print(f"wrote {target} from {len(chips)} chips")


def precision_table(chips: list, repeats: int) -> None:
    """ms per face at batch 32 through the Embedder, fp32 / bf16 / int8 timed in turn (so each
    sees the same load), and how far each moves the unit vectors from fp32's; then what
    `--precision auto` picks on this CPU (from its flags and the recorded tables, not from these
    timings) beside the recorded ratios, so a new kind of CPU shows where the tables need a row."""
    from facenet_cli.models.catalogue import get_record
    from facenet_cli.nets import precision as auto
    from facenet_cli.nets.embedder import Embedder

    record = get_record("dlib-resnet.v1")
    embedders = {p: Embedder(record, device="cpu", batch_size=32, precision=p) for p in ("fp32", "bf16", "int8")}
    vectors = {p: e.embed(chips) for p, e in embedders.items()}  # also the warm-up
    times: dict[str, list[float]] = {p: [] for p in embedders}
    for _ in range(repeats):
        for p, e in embedders.items():
            start = time.perf_counter()
            e.embed(chips)
            times[p].append(time.perf_counter() - start)
    fp32 = statistics.median(times["fp32"])
    measured = {p: fp32 / statistics.median(times[p]) for p in embedders}
    print(f"\nprecision, batch 32, {len(chips)} faces, through Embedder.embed (median of {repeats}, interleaved):")
    print(f"{'':6} {'ms/face':>8} {'speed vs fp32':>14} {'sq. L2 to fp32: median':>23} {'max':>8}")
    for p in embedders:
        moved = ((vectors[p] - vectors["fp32"]) ** 2).sum(1)
        median_s = statistics.median(times[p])
        print(f"{p:6} {median_s / len(chips) * 1e3:8.2f} {fp32 / median_s:13.2f}x "
              f"{float(np.median(moved)):23.6f} {float(moved.max()):8.6f}")
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}; load average {os.getloadavg()}")
    kind = auto.cpu_class()
    recorded = auto.CPU_SPEED.get(kind, {})
    print(auto.describe(record))
    print("  recorded speed vs fp32: " + (", ".join(f"{p} {r:.2f}x" for p, r in recorded.items()) or "none (fp32)")
          + "; measured now: " + ", ".join(f"{p} {r:.2f}x" for p, r in measured.items()))
    fastest = max(measured, key=measured.get)
    print(f"  fastest measured now: {fastest}; auto's choice also needs View 2 within "
          f"{auto.ACCURACY_BOUND * 100:.1f} point of fp32 (nets/precision.py VIEW2_ACCURACY)")


def engines_table(model, chips: list, repeats: int, workdir: Path) -> None:
    """Other inference engines on the same network, batch 32: ONNX Runtime and OpenVINO in fp32,
    and int8 from ONNX Runtime's static quantisation (per-channel s8 weights, u8 activations,
    calibrated on the first 64 chips) run by both; ours (PyTorch) in fp32 and int8 beside them.
    Each row: ms per face, speed against our fp32, the smallest cosine to our fp32 vectors."""
    try:
        import onnxruntime as ort
        import openvino as ov
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        sys.exit(f"--engines needs onnxruntime, onnx, onnxscript and openvino ({exc}); pip install -e .[bench]")
    import warnings

    from facenet_cli.models.catalogue import get_record
    from facenet_cli.nets.embedder import Embedder

    batch = np.stack(chips[:32]).transpose(0, 3, 1, 2).astype(np.float32)
    fixed = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
    onnx_path, prepared, int8_path = workdir / "dlib.onnx", workdir / "dlib-pre.onnx", workdir / "dlib-int8.onnx"
    # dlib's zero-padded shortcut sums trace to fixed shapes: the exported graph takes batches of 32.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on those shapes
        torch.onnx.export(model, (fixed,), str(onnx_path), input_names=["images"], output_names=["vectors"],
                          dynamo=False, opset_version=17)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            calib = np.stack(chips[:64]).transpose(0, 3, 1, 2).astype(np.float32)
            self.batches = iter([calib[i:i + 32] for i in range(0, len(calib) - 31, 32)] or [batch])

        def get_next(self):
            item = next(self.batches, None)
            return None if item is None else {"images": item}

    quant_pre_process(str(onnx_path), str(prepared))  # shape inference and folding, as ORT advises
    quantize_static(str(prepared), str(int8_path), Calibration(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = ARGS.threads, 1
    core = ov.Core()
    runs = {}
    for label, precision in (("PyTorch (ours) fp32", "fp32"), ("PyTorch (ours) int8", "int8")):
        embedder = Embedder(get_record("dlib-resnet.v1"), device="cpu", batch_size=32, precision=precision)
        runs[label] = (lambda e=embedder: e._forward(np.stack(chips[:32])))
    for label, path in (("ONNX Runtime fp32", onnx_path), ("ONNX Runtime int8", int8_path)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        runs[label] = (lambda s=session: s.run(None, {"images": batch})[0])
    for label, path in (("OpenVINO fp32", onnx_path), ("OpenVINO int8", int8_path)):
        request = core.compile_model(core.read_model(str(path)), "CPU",
                                     {"INFERENCE_NUM_THREADS": ARGS.threads, "PERFORMANCE_HINT": "LATENCY"}
                                     ).create_infer_request()
        runs[label] = (lambda r=request: next(iter(r.infer({0: batch}).values())))
    with torch.inference_mode():
        vectors = {label: np.asarray(run(), dtype=np.float64) for label, run in runs.items()}  # and warm-up
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(repeats):
            for label, run in runs.items():
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)
    reference = vectors["PyTorch (ours) fp32"]
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    ours = statistics.median(times["PyTorch (ours) fp32"])
    print(f"\nengines, batch 32, {ARGS.threads} thread(s), median of {repeats} (interleaved); "
          f"onnxruntime {ort.__version__}, openvino {ov.__version__}:")
    print(f"{'':22} {'ms/face':>8} {'vs ours fp32':>13} {'min cosine to ours fp32':>24}")
    for label in runs:
        v = vectors[label] / np.linalg.norm(vectors[label], axis=1, keepdims=True)
        seconds = statistics.median(times[label])
        print(f"{label:22} {seconds / 32 * 1e3:8.2f} {ours / seconds:12.2f}x {float((v * reference).sum(1).min()):24.4f}")


def main() -> None:
    import dlib

    lfw = ARGS.data / "lfw" / "deepfunneled"
    if not lfw.is_dir():
        sys.exit(f"LFW images not found at {lfw}; pass --data or set FACENET_DATA.")
    if ARGS.calibrate_int8:
        write_int8_calibration(lfw)
        return
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
        rows.append((f"batch {min(batch_size, n)}", ours * 1e3, theirs * 1e3))

    print(f"{n} LFW chips, {ARGS.threads} thread(s), median of {ARGS.repeats}, torch {torch.__version__}, "
          f"dlib {dlib.__version__} (BLAS {'on' if dlib.DLIB_USE_BLAS else 'off'})")
    print(f"{'':10} {'ours ms/face':>13} {'dlib ms/face':>13} {'dlib/ours':>10}")
    for label, ours_ms, dlib_ms in rows:
        print(f"{label:10} {ours_ms:13.2f} {dlib_ms:13.2f} {dlib_ms / ours_ms:10.2f}x")

    flops_per_face = conv_flops(model)
    network_rate, matmul_rate, ratio = interleaved_rates(
        torch_runner(model, batch, 32), flops_per_face * n, ARGS.repeats)
    print(f"\nnetwork: {flops_per_face / 1e9:.3f} GFLOP per face (convolutions + fc)")
    print(f"batch {min(32, n)}, timed alternately with fp32 matmul 2048x2048 (median of {ARGS.repeats} pairs):")
    print(f"  network {network_rate / 1e9:.1f} GFLOP/s, matmul {matmul_rate / 1e9:.1f} GFLOP/s, "
          f"network/matmul = {ratio:.2f}")

    if ARGS.precision:
        precision_table(chips, ARGS.repeats)

    if ARGS.engines:
        import tempfile

        if n < 32:
            sys.exit("--engines needs --faces 32 or more (the exported graph takes batches of 32).")
        with tempfile.TemporaryDirectory(prefix="facenet-engines-") as workdir:
            engines_table(model, chips, ARGS.repeats, Path(workdir))

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
