"""Aligned face crops in, unit-length embeddings out.

`Embedder` loads a model's network once and runs batches through it; `squared_distances`
compares the results the way the models' thresholds are stated (squared L2 on the sphere).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .catalogue import ModelRecord
from .errors import SpecMismatch, UsageError
from .nets import build_network


def resolve_weights(record: ModelRecord) -> Path | None:
    """The local, checksum-verified weights file of `record` (None for bare architectures)."""
    if record.weights is None:
        return None
    from .hub import weights_path

    return weights_path(record)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu.")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}.")
    return torch.device(device)


class Embedder:
    """One model's network, loaded once, turning aligned crops into embeddings.

    `flip=True` also embeds each crop's mirror image and averages the two.
    """

    def __init__(self, record: ModelRecord, device: str = "auto", flip: bool = False,
                 batch_size: int = 32, weights: str | Path | None = None):
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
        self.record = record
        self.device = pick_device(device)
        self.flip = flip
        self.batch_size = batch_size
        self.size = record.align.size
        path = Path(weights) if weights is not None else resolve_weights(record)
        self.network = build_network(record, path).to(self.device, memory_format=torch.channels_last)
        self.center = (np.asarray(record.center, dtype=np.float32)
                       if record.center is not None else None)

    @property
    def dim(self) -> int:
        return self.record.embedding_dim

    def _check(self, images: Sequence[np.ndarray]) -> None:
        for index, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise UsageError(f"Image {index} is {image.dtype} {image.shape}, not an HxWx3 uint8 RGB array.")
            if image.shape[:2] != (self.size, self.size):
                raise SpecMismatch(
                    f"Image {index} is {image.shape[1]}x{image.shape[0]} but model {self.record.name!r} "
                    f"needs {self.size}x{self.size} crops aligned with {self.record.align.name}; realign them."
                )

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        # NHWC uint8 -> NCHW float view whose strides are already channels_last: no copy but the cast.
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        if self.flip:
            x = torch.cat([x, x.flip(3)])
        out = self.network(x).float()
        if self.flip:
            # Average raw vectors (as dlib does for its jittered copies). Centring is linear, so
            # this equals averaging centred vectors; normalising last keeps one unit vector.
            originals, mirrors = out.chunk(2)
            out = (originals + mirrors) / 2
        return out.cpu().numpy()

    def embed(self, images: Sequence[np.ndarray], raw: bool = False) -> np.ndarray:
        """(N, D) float32 embeddings of aligned HxWx3 uint8 RGB crops: the raw network outputs
        if `raw`, else minus `record.center` (when set) and scaled to unit length."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._check(images)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunks.append(self._forward(np.stack(images[start:start + self.batch_size])))
        vectors = np.concatenate(chunks).astype(np.float32, copy=False)
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
