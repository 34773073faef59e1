"""`--precision auto`: the network arithmetic chosen from the CPU's flags and measured tables.

The rule (issue 20): the fastest precision whose LFW View 2 accuracy stays within
`ACCURACY_BOUND` (0.1 point) of fp32's, on the kind of CPU at hand. It is decided from the CPU's
flags (/proc/cpuinfo) and the two tables below, never timed at start-up, so the same machine
always makes the same choice and a start-up costs nothing. Nothing here imports torch.

- `CPU_SPEED`: the network's speed per precision against fp32, per CPU class, as measured by
  `python benchmarks/embed_speed.py --threads 2 --faces 32 --repeats 3 --precision`.
- `VIEW2_ACCURACY`: LFW View 2 accuracy per model, CPU class and precision (`--flip`, the README's
  alignment), as measured by
  `python benchmarks/lfw_tta.py --view 2 --variant fp32:flip --variant bf16:flip --variant int8:flip`.

A CPU class, model or device without a measurement gets fp32: a guess never replaces a figure.
An AVX-512 CPU without bf16 units is judged by the AVX2 figures (its int8 and fp32 kernels are
at least those; its bf16 is emulated, as on AVX2). CUDA: fp32 (nothing measured on a GPU yet).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from ..models.catalogue import ModelRecord

AUTO = "auto"
REFERENCE = "fp32"
ACCURACY_BOUND = 0.001  # 0.1 point of accuracy below fp32's at most

# CPU classes, most capable first: (name, flags it needs, what it is in words).
CPU_CLASSES = (
    ("avx512-bf16", frozenset({"avx512f", "avx512_bf16", "avx512_vnni"}),
     "AVX-512 with BF16 and VNNI units (Intel Sapphire Rapids and later, AMD Zen 4 and later)"),
    ("avx2", frozenset({"avx2", "fma"}), "AVX2 (no bf16 units: bf16 is emulated)"),
)
BASELINE = "baseline"  # none of the above (or not an x86 CPU, or no /proc/cpuinfo)

# Network speed against fp32 (embed_speed.py --threads 2 --faces 32 --repeats 3 --precision).
CPU_SPEED: dict[str, dict[str, float]] = {
    # 2-core AMD EPYC, AVX2 only (docs/SPEED.md, `--precision` table).
    "avx2": {"fp32": 1.0, "bf16": 0.13, "int8": 1.30},
    # 2 cores with AVX-512 BF16/VNNI and AMX, idle (issue 20). On one thread int8 leads instead
    # (`--threads 1 --faces 32 --repeats 5`: bf16 2.55x, int8 3.11x); two threads are what the
    # commands run with, and bf16 also stays 10x nearer fp32's vectors (0.00005 vs 0.0005).
    "avx512-bf16": {"fp32": 1.0, "bf16": 2.12, "int8": 2.05},
}

# LFW View 2 accuracy (10 folds, with --flip) per model, CPU class and precision.
VIEW2_ACCURACY: dict[str, dict[str, dict[str, float]]] = {
    "dlib-resnet.v1": {
        # docs/ACCURACY.md (TTA table), docs/SPEED.md: fp32 0.9902 +- 0.0028, int8 0.9897 +- 0.0027.
        "avx2": {"fp32": 0.9902, "int8": 0.9897},
        # The command above with --threads 1 on this class (int8 runs u8 x s8 through VNNI here):
        # fp32 0.9902 +- 0.0028, bf16 0.9908 +- 0.0034, int8 0.9905 +- 0.0029 (AUC 0.9995 each).
        "avx512-bf16": {"fp32": 0.9902, "bf16": 0.9908, "int8": 0.9905},
    },
}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags (Linux); empty where the file is missing or has none."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_class(flags: Iterable[str] | None = None) -> str:
    """The CPU_CLASSES name these flags (default: this machine's) meet first, else BASELINE."""
    have = frozenset(cpu_flags() if flags is None else flags)
    for name, needs, _ in CPU_CLASSES:
        if needs <= have:
            return name
    return BASELINE


def available(record: "ModelRecord", device_type: str) -> tuple[str, ...]:
    """The precisions the embedder can run for this model on this device (see nets/embedder.py)."""
    found = ["fp32", "bf16"]
    if record.architecture == "dlib-resnet" and device_type == "cpu":
        found.append("int8")
    return tuple(found)


def choose_precision(record: "ModelRecord", device_type: str = "cpu", flags: Iterable[str] | None = None) -> str:
    """What `--precision auto` runs `record` in on `device_type` ("cpu" or "cuda") with these CPU
    flags (default: this machine's): the fastest measured precision whose View 2 accuracy is within
    ACCURACY_BOUND of fp32's on that CPU class; fp32 wherever a figure is missing."""
    if device_type != "cpu":
        return REFERENCE
    kind = cpu_class(flags)
    speed = CPU_SPEED.get(kind, {})
    accuracy = VIEW2_ACCURACY.get(record.name, {}).get(kind, {})
    if REFERENCE not in accuracy:
        return REFERENCE
    good = [p for p in available(record, device_type)
            if p in accuracy and p in speed and accuracy[REFERENCE] - accuracy[p] <= ACCURACY_BOUND + 1e-9]
    return max(good, key=lambda p: (speed[p], p == REFERENCE), default=REFERENCE)


def describe(record: "ModelRecord", flags: Iterable[str] | None = None) -> str:
    """One line: this CPU's class and what auto picks on it, for benchmarks and messages."""
    kind = cpu_class(flags)
    words = {name: text for name, _, text in CPU_CLASSES}.get(kind, "no AVX2: fp32 only")
    chosen = choose_precision(record, "cpu", flags)
    return f"CPU class {kind} ({words}): --precision auto runs {record.name} in {chosen}"
