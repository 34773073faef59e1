"""Checkpoints, the one home of the `.pt` files `facenet train` writes and every --model,
--init and --resume reads.

A checkpoint is a `torch.save`d dict of plain data and tensors:

* `record`: the model record (`ModelRecord.to_dict()`: architecture, alignment, threshold, ...),
* `state_dict`: the network's weights,
* `epoch`: the epochs trained,
* and in a work folder's `last.pt`, what a resume needs: `optimizer` (its state dict), `rng`,
  `config` (the TrainConfig as a dict) and `history` (one dict per epoch).

Saving is atomic (facenet_cli/atomic.py: a temporary file beside the target, then a rename), so
a killed run never leaves half a checkpoint under the real name, and a full disk is DiskFull.
Everything is stored as plain Python data (enums as their values, paths as strings), because
loading uses `weights_only=True`, which runs no pickled code and refuses any other type.
Loading raises one error type per cause: UsageError for a path that is not there, DataError
for a file that is damaged or is not a facenet checkpoint.
"""
from __future__ import annotations

import io
import os
from enum import Enum
from functools import lru_cache
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_open
from ..errors import DataError, UsageError

if TYPE_CHECKING:
    from ..models.catalogue import ModelRecord

MODEL_KEYS = ("record", "state_dict")  # what makes a file usable as --model
RESUME_KEYS = ("optimizer", "rng", "config", "history", "epoch")  # what `last.pt` adds


def plain(value: Any) -> Any:
    """`value` with enums, paths and numpy scalars turned into the plain types weights_only loads."""
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> Path:
    """Write `checkpoint` to `path` atomically; DiskFull / WriteError when the disk refuses."""
    import torch

    path = Path(path)
    # Serialised in memory first, so that the only failure while the file is open is the OS's
    # (ENOSPC arrives as an OSError, not as torch's RuntimeError from inside its zip writer).
    buffer = io.BytesIO()
    torch.save(plain(checkpoint), buffer)
    with atomic_open(path, "wb") as fh:
        fh.write(buffer.getbuffer())
    return path


def load_checkpoint(path: str | os.PathLike, keys: tuple[str, ...] = MODEL_KEYS, fresh: bool = False) -> dict:
    """The checkpoint dict in `path`, loaded with weights_only (no pickled code runs).

    The file's tensors are shared with the next call while the file is unchanged; `fresh=True`
    reads it anew, for a caller whose tensors will change in place (a resumed optimizer's state).

    UsageError when there is no file at `path`; DataError when it cannot be read as a
    checkpoint or lacks one of `keys`.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a checkpoint file; give a .pt file saved by `facenet train`.")
    if not path.is_file():
        raise UsageError(f"No checkpoint file at {path}; check the path.")
    try:
        info = path.stat()
        reader = _read.__wrapped__ if fresh else _read
        checkpoint = reader(str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino)
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}); check the file.") from None
    except Exception as exc:  # torch.load raises many unrelated types for a damaged or foreign file
        raise DataError(
            f"{path} is damaged or not a PyTorch checkpoint ({type(exc).__name__}); "
            "give a file saved by `facenet train`, or train again."
        ) from None
    if not isinstance(checkpoint, dict):
        raise DataError(f"{path} is a PyTorch file but not a facenet checkpoint; give a file saved by `facenet train`.")
    checkpoint = dict(checkpoint)  # the caller's own dict; the cached one stays as read
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        raise DataError(
            f"{path} is a PyTorch file but not a facenet checkpoint (it lacks {', '.join(repr(k) for k in missing)}); "
            "give a file saved by `facenet train`."
        )
    return checkpoint


@lru_cache(maxsize=1)
def _read(path: str, size: int, mtime_ns: int, inode: int) -> dict:
    """torch.load of a checkpoint, kept for the next call while the file is unchanged: `--model
    CHECKPOINT` reads it for its record and again for its weights (one file held at most)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_record(path: str | os.PathLike) -> "ModelRecord":
    """The model record a checkpoint carries, as saved. Its weights are the checkpoint file
    itself: models/hub.py (resolve_model) points them there with the file's SHA-256, so that
    this format module never imports the hub (the hub imports it)."""
    from ..models.catalogue import ModelRecord

    path = Path(path)
    checkpoint = load_checkpoint(path)
    try:
        return ModelRecord.from_dict(checkpoint["record"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"{path} carries a malformed model record (bad field {exc}); re-save it with `facenet train`."
        ) from None


def load_state_dict(path: str | os.PathLike, network, architecture: str) -> None:
    """Load a checkpoint's weights into `network`; DataError when they do not fit it."""
    state = load_checkpoint(path, keys=("state_dict",))["state_dict"]
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise DataError(f"{path} does not hold {architecture} weights ({str(exc).splitlines()[0]}); "
                        "give a checkpoint of that architecture.") from None


__all__ = ["MODEL_KEYS", "RESUME_KEYS", "checkpoint_record", "load_checkpoint", "load_state_dict", "plain",
           "save_checkpoint"]
