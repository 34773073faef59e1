"""Plain nn.Modules, one file per family, and the registry that builds them by name.

Every network's `forward` takes a float tensor (N, 3, S, S), RGB, values 0..255, at the size
of its record's alignment spec, and does its own input normalisation; it returns (N, D)
embeddings (raw or normalised; `facenet_cli.nets.embedder` normalises either way).

A builder is `builder(record, weights_path) -> nn.Module`. Builders are imported only when
used, so listing the registry costs no model code.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import UnknownModel

if TYPE_CHECKING:  # torch stays unimported until a network is built
    from torch import nn

    from ..models.catalogue import ModelRecord

Builder = Callable[["ModelRecord", "str | Path | None"], "nn.Module"]


def _lazy(module: str, function: str) -> Builder:
    """A builder that imports `facenet_cli.nets.<module>.<function>` on first call."""

    def build(record: ModelRecord, weights_path: str | Path | None) -> nn.Module:
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)(record, weights_path)

    build.__qualname__ = f"{module}.{function}"
    return build


# architecture name (ModelRecord.architecture) -> builder
ARCHITECTURES: dict[str, Builder] = {
    # dlib's 29-conv ResNet, read from its .dat file.
    "dlib-resnet": _lazy("dlib_resnet", "build_dlib_resnet"),
    # FaceNet/OpenFace inception networks; weights are a torch checkpoint's state dict
    # (or none, for an untrained network).
    "nn4": _lazy("nn4", "build_nn4"),
    "nn4.small1": _lazy("nn4", "build_nn4"),
    "nn4.small2": _lazy("nn4", "build_nn4"),
    "nn2": _lazy("nn4", "build_nn4"),
}


def build_network(record: ModelRecord, weights_path: str | Path | None) -> nn.Module:
    """The eval-mode network of `record`, with its weights loaded from `weights_path`."""
    if record.architecture not in ARCHITECTURES:
        raise UnknownModel(
            f"Model {record.name!r} names architecture {record.architecture!r}; "
            f"known ones are {', '.join(sorted(ARCHITECTURES))}."
        )
    model = ARCHITECTURES[record.architecture](record, weights_path)
    return model.eval()
