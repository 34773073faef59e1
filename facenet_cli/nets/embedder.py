"""Aligned face crops in, unit-length embeddings out.

`Embedder` loads a model's network once and runs batches through it; `squared_distances`
compares the results the way the models' thresholds are stated (squared L2 on the sphere).

Speed levers, each measured by a benchmark (see docs/SPEED.md):

* `precision`: fp32 (the reference), bf16 (autocast through oneDNN or CUDA; fast only where the
  hardware has bf16 units), int8 (static quantisation of dlib's ResNet, CPU only) or auto (one of
  those, chosen from the CPU's flags and measured tables: nets/precision.py; the pipeline's default).
* `tta`: test-time augmentation, the average over each crop and `tta` jittered copies of it
  (dlib-style small shifts, zooms and rotations, the same fixed set for every face).
* `engine="auto"`: a job of a few faces (`facenet compare`) on the CPU runs dlib's own C++ copy
  of the network instead of importing PyTorch (1.5-2 s of start-up, more than the whole job);
  dlib's and our vectors agree to ~1e-6. Bigger jobs and other models use PyTorch.

This module imports neither torch nor dlib until a network is needed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..models.catalogue import ModelRecord
from ..errors import SpecMismatch, UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "int8")  # what a network runs in; "auto" picks one (nets/precision.py)
ENGINES = ("auto", "torch", "dlib")
# Forward passes up to which engine="auto" uses dlib's C++ network: at ~75 ms a face it beats
# importing torch (1.6-1.9 s) up to about 20 faces; 8 leaves room for a loaded machine.
SMALL_JOB_PASSES = 8
# dlib's jitter (dlib/image_transforms/interpolation.h, jitter_image): a box of the chip shrunk
# by 3 px, enlarged to 1/0.99-1/0.97 of its height, shifted by up to 2% and rotated by up to 3
# degrees. Fixed seed: the same copies for every face and every run.
JITTER_SHRINK_PX = 3
JITTER_HEIGHT = (0.97, 0.99)
JITTER_SHIFT = 0.02
JITTER_DEGREES = 3.0
JITTER_SEED = 0


def resolve_weights(record: ModelRecord) -> Path | None:
    """The local, checksum-verified weights file of `record` (None for bare architectures)."""
    if record.weights is None:
        return None
    from ..models.hub import weights_path

    return weights_path(record)


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver is installed, asked without importing torch (no driver: no CUDA)."""
    if os.path.exists("/proc/driver/nvidia/version"):
        return True
    if os.name == "nt":
        import ctypes.util

        return ctypes.util.find_library("nvcuda") is not None
    return False


def pick_device(device: str) -> "torch.device":
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu.")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}.")
    return torch.device(device)


def auto_precision(record: ModelRecord, device: str) -> str:
    """What precision="auto" runs `record` in on `device` (auto, cpu or cuda): nets/precision.py's
    choice for this CPU, fp32 on a GPU. Torch is imported only where an NVIDIA driver is present."""
    from .precision import choose_precision

    on_gpu = device == "cuda" or (device == "auto" and cuda_driver_present() and _torch_sees_cuda())
    return choose_precision(record, "cuda" if on_gpu else "cpu")


def _torch_sees_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def jitter_matrices(count: int, size: int) -> np.ndarray:
    """(count, 2, 3) affine maps from output pixel to source pixel for `count` dlib-style jitters
    of a size x size chip (for cv2.warpAffine with WARP_INVERSE_MAP)."""
    rng = np.random.default_rng(JITTER_SEED)
    side = size - 2 * JITTER_SHRINK_PX
    center = (size - 1) / 2.0
    matrices = np.zeros((count, 2, 3), dtype=np.float64)
    for index in range(count):
        shift = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, size=2) * side
        scale = side / rng.uniform(*JITTER_HEIGHT) / size
        angle = np.deg2rad(rng.uniform(-JITTER_DEGREES, JITTER_DEGREES))
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrices[index, :, :2] = rotation
        matrices[index, :, 2] = center + shift - rotation @ np.array([center, center])
    return matrices


def jittered(image: np.ndarray, matrices: np.ndarray) -> list[np.ndarray]:
    """`image` warped by each of `matrices` (bilinear, border replicated)."""
    import cv2

    size = (image.shape[1], image.shape[0])
    return [cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE) for m in matrices]


class Embedder:
    """One model's network, loaded once, turning aligned crops into embeddings.

    `flip=True` also embeds each crop's mirror image and averages the two; `tta=N` averages N
    jittered copies in too (with flip, their mirrors as well): (1 + N) x (2 if flip) passes per
    face. `precision`: fp32, bf16, int8 or auto (see the module doc; `precision` then holds the
    one chosen, `requested_precision` "auto"; dlib's engine, when it runs, is fp32). `engine`: torch (load the
    network now), dlib (dlib's C++ network; dlib-resnet models, CPU, fp32) or auto (decide at
    the first `embed` call: dlib's for a handful of faces, torch otherwise).
    """

    def __init__(self, record: ModelRecord, device: str = "auto", flip: bool = False,
                 batch_size: int = 32, weights: str | Path | None = None, precision: str = "fp32",
                 tta: int = 0, engine: str = "torch"):
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}.")
        if precision not in (*PRECISIONS, "auto"):
            raise UsageError(f"--precision must be auto or one of {', '.join(PRECISIONS)}, not {precision!r}.")
        if tta < 0:
            raise UsageError(f"--tta must be 0 or more jittered copies, not {tta}.")
        if engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}.")
        is_dlib = record.architecture == "dlib-resnet"
        self.requested_precision = precision
        if precision == "auto":
            precision = "fp32" if engine == "dlib" else auto_precision(record, device)
        if precision == "int8" and not is_dlib:
            raise UsageError(f"--precision int8 is available for dlib-resnet models, not {record.name!r} "
                             f"({record.architecture}); use fp32 or bf16.")
        if precision == "int8" and device == "cuda":
            raise UsageError("--precision int8 runs on the CPU only (PyTorch's quantized kernels); "
                             "use --device cpu, or bf16 on the GPU.")
        if engine == "dlib" and not (is_dlib and precision == "fp32" and device != "cuda"):
            raise UsageError("dlib's engine runs dlib-resnet models in fp32 on the CPU only.")
        self.record = record
        self.flip = flip
        self.batch_size = batch_size
        self.precision = precision
        self.tta = tta
        self.size = record.align.size
        self.center = (np.asarray(record.center, dtype=np.float32)
                       if record.center is not None else None)
        self.requested_device = "cpu" if precision == "int8" else device
        self._weights = Path(weights) if weights is not None else None
        self._network = None
        self._dlib_net = None
        self._device = None
        self._jitters = jitter_matrices(tta, self.size) if tta else None
        # dlib's engine only where it gives the same numbers for sure: its own ResNet, fp32, CPU.
        # Under auto a handful of faces still goes to dlib's fp32 network: no torch import is faster.
        self._dlib_allowed = (is_dlib and (precision == "fp32" or self.requested_precision == "auto")
                              and engine in ("auto", "dlib")
                              and (device == "cpu" or (device == "auto" and not cuda_driver_present())))
        self.engine = engine
        if engine == "torch":
            self._load_torch()
        elif engine == "dlib":
            self._load_dlib()
        else:
            self.weights_path()  # a missing or damaged weights file fails now, not mid-job

    # --- loading ----------------------------------------------------------------------------

    def weights_path(self) -> Path | None:
        """The verified weights file (resolved, downloaded and checked on first use)."""
        if self._weights is None:
            self._weights = resolve_weights(self.record)
        return self._weights

    def _load_torch(self) -> None:
        import torch

        from . import build_network

        self._device = pick_device(self.requested_device)
        network = build_network(self.record, self.weights_path())
        if self.precision == "int8":
            from .dlib_resnet import int8_dlib_resnet

            network = int8_dlib_resnet(network.to(memory_format=torch.channels_last))
        self._network = network.to(self._device, memory_format=torch.channels_last)

    def _load_dlib(self) -> None:
        import dlib

        self._dlib_net = dlib.face_recognition_model_v1(str(self.weights_path()))

    @property
    def network(self):
        """The PyTorch network (loaded on first use when engine="auto")."""
        if self._network is None:
            self._load_torch()
        return self._network

    @property
    def device(self) -> "torch.device":
        if self._device is None:
            self._device = pick_device(self.requested_device)
        return self._device

    @property
    def dim(self) -> int:
        return self.record.embedding_dim

    @property
    def passes_per_face(self) -> int:
        return (1 + self.tta) * (2 if self.flip else 1)

    # --- running ----------------------------------------------------------------------------

    def _check(self, images: Sequence[np.ndarray]) -> None:
        for index, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise UsageError(f"Image {index} is {image.dtype} {image.shape}, not an HxWx3 uint8 RGB array.")
            if image.shape[:2] != (self.size, self.size):
                raise SpecMismatch(
                    f"Image {index} is {image.shape[1]}x{image.shape[0]} but model {self.record.name!r} "
                    f"needs {self.size}x{self.size} crops aligned with {self.record.align.name}; realign them."
                )

    def _copies(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image then its jittered copies, face after face ((1 + tta) per face)."""
        if not self.tta:
            return list(images)
        return [copy for image in images for copy in [image, *jittered(image, self._jitters)]]

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Raw vectors of a (B, S, S, 3) uint8 batch, each averaged with its mirror under flip."""
        import torch

        # NHWC uint8 -> NCHW float view whose strides are already channels_last: no copy but the cast.
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        if self.flip:
            x = torch.cat([x, x.flip(3)])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.network(x).float()
        if self.flip:
            # Average raw vectors (as dlib does for its jittered copies). Centring is linear, so
            # this equals averaging centred vectors; normalising last keeps one unit vector.
            originals, mirrors = out.chunk(2)
            out = (originals + mirrors) / 2
        return out.cpu().numpy()

    def _forward_dlib(self, batch: list[np.ndarray]) -> np.ndarray:
        chips = [np.ascontiguousarray(c) for c in batch]
        if self.flip:
            chips += [np.ascontiguousarray(c[:, ::-1]) for c in batch]
        out = np.array(self._dlib_net.compute_face_descriptor(chips), dtype=np.float32)
        if self.flip:
            out = (out[:len(batch)] + out[len(batch):]) / 2
        return out

    def _use_dlib(self, faces: int) -> bool:
        if self._dlib_net is not None:
            return True
        if self._network is not None or not self._dlib_allowed:
            return False
        if faces * self.passes_per_face > SMALL_JOB_PASSES:
            return False
        self._load_dlib()
        self.precision = "fp32"  # what dlib's network runs in (auto may have chosen another for torch)
        return True

    def embed(self, images: Sequence[np.ndarray], raw: bool = False) -> np.ndarray:
        """(N, D) float32 embeddings of aligned HxWx3 uint8 RGB crops: the raw network outputs
        if `raw`, else minus `record.center` (when set) and scaled to unit length."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._check(images)
        copies = self._copies(images)
        if self._use_dlib(len(images)):
            vectors = self._forward_dlib(copies)
        else:
            import torch

            chunks = []
            with torch.inference_mode():
                for start in range(0, len(copies), self.batch_size):
                    chunks.append(self._forward(np.stack(copies[start:start + self.batch_size])))
            vectors = np.concatenate(chunks).astype(np.float32, copy=False)
        if self.tta:
            # Raw vectors averaged over each face's copies, as over the mirror above.
            vectors = vectors.reshape(len(images), 1 + self.tta, -1).mean(axis=1)
        if raw:
            return vectors
        return normalise(vectors, self.center)


def normalise(vectors: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Rows minus `center`, scaled to unit L2 length (a zero row stays zero)."""
    if center is not None:
        vectors = vectors - center
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) squared L2 distances between the rows of `a` (N, D) and `b` (M, D).

    Computed in float64 so that a vector's distance to itself is 0 to ~1e-15 rather than the
    ~1e-7 float32 cancellation would leave.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise UsageError(f"Cannot compare {a.shape[1]}-d embeddings with {b.shape[1]}-d ones; use one model.")
    distances = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(distances, 0.0)
