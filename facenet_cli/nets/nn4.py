"""FaceNet's inception networks as OpenFace trained them: nn4, nn4.small1, nn4.small2, nn2.

The layer tables follow the FaceNet paper (Schroff et al. 2015, table 2 "NN2") and OpenFace's
model definitions (models/openface/*.def.lua): batch norm after every convolution, 96x96 RGB
input, 128-d L2-normalised output. Parameter counts for 128-d embeddings (weights and biases,
no batch-norm running statistics) equal OpenFace's published ones:
nn4.small2 3,733,968; nn4.small1 5,579,520; nn4 6,959,088; nn2 7,472,144.

Input convention shared by every network in facenet_cli.nets: a float tensor (N, 3, H, W), RGB,
values 0..255. The 1/255 scaling OpenFace applied when loading images lives inside `forward`.

Two of OpenFace's quirks are kept on purpose, so its layouts (and any weights converted from
them) mean the same thing here:
- Torch's DepthConcat zero-pads a branch whose map is smaller than the others, centred
  (floor of the difference before, the rest after). Several pooling branches shrink the map
  (3x3 max pool with stride 2 and no padding, L2 pool with stride 3), so this matters.
- nn.SpatialLPPooling(C, 2, 3, 3) has stride 3 (Torch's stride defaults to the kernel size).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..align.specs import get_spec
from ..models.catalogue import ModelRecord
from ..errors import UnknownModel

INPUT_SIZE = 96
# OpenFace's LFW evaluation put the squared-L2 same/different threshold for nn4.small2.v1 near
# 0.99; a starting point for these architectures until a trained model is measured.
DEFAULT_THRESHOLD = 0.99


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "l2"
    kernel: int
    stride: int
    padding: int = 0

    def build(self) -> nn.Module:
        if self.kind == "max":
            return nn.MaxPool2d(self.kernel, self.stride, self.padding)
        if self.padding:
            raise ValueError("L2 pooling has no padding in any OpenFace network")
        # LPPool2d(2) is sqrt(sum of squares) over the window, Torch's SpatialLPPooling(p=2).
        return nn.LPPool2d(2, self.kernel, self.stride)


@dataclass(frozen=True)
class Branch:
    """A 1x1 reduction followed by a kxk convolution."""

    kernel: int
    reduce: int
    out: int
    stride: int = 1


@dataclass(frozen=True)
class InceptionSpec:
    in_channels: int
    branches: tuple[Branch, ...]
    pool: Pool
    pool_proj: int | None  # 1x1 convolution after the pool; None passes the pool through
    one_by_one: int | None  # the plain 1x1 branch; None in the reducing (stride-2) modules

    @property
    def out_channels(self) -> int:
        pool_out = self.pool_proj if self.pool_proj is not None else self.in_channels
        return sum(b.out for b in self.branches) + pool_out + (self.one_by_one or 0)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 padding: int = 0) -> nn.Sequential:
    # Convolutions keep their bias (as in Torch's SpatialConvolutionMM) although batch norm
    # follows: the published parameter counts include it.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=True),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad a smaller map to (height, width), centred the way Torch's DepthConcat does."""
    dh, dw = height - x.shape[2], width - x.shape[3]
    if dh == 0 and dw == 0:
        return x
    top, left = dh // 2, dw // 2
    return F.pad(x, (left, dw - left, top, dh - top))


class Inception(nn.Module):
    """Parallel 1x1->kxk branches, a pool branch and a 1x1 branch, concatenated on channels."""

    def __init__(self, spec: InceptionSpec):
        super().__init__()
        c = spec.in_channels
        self.branches = nn.ModuleList(
            nn.Sequential(
                conv_bn_relu(c, b.reduce, 1),
                conv_bn_relu(b.reduce, b.out, b.kernel, b.stride, b.kernel // 2),
            )
            for b in spec.branches
        )
        pool_branch = [spec.pool.build()]
        if spec.pool_proj is not None:
            pool_branch.append(conv_bn_relu(c, spec.pool_proj, 1))
        self.pool_branch = nn.Sequential(*pool_branch)
        self.one_by_one = conv_bn_relu(c, spec.one_by_one, 1) if spec.one_by_one else None
        self.out_channels = spec.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self.branches]
        outputs.append(self.pool_branch(x))
        if self.one_by_one is not None:
            outputs.append(self.one_by_one(x))
        height = max(o.shape[2] for o in outputs)
        width = max(o.shape[3] for o in outputs)
        return torch.cat([pad_to(o, height, width) for o in outputs], dim=1)


def _b(kernel: int, reduce: int, out: int, stride: int = 1) -> Branch:
    return Branch(kernel, reduce, out, stride)


MAX_S2 = Pool("max", 3, 2)  # OpenFace nn4/nn4.small2/nn2: stride 2, no padding, everywhere
L2_S3 = Pool("l2", 3, 3)  # SpatialLPPooling(C, 2, 3, 3): stride defaults to the kernel size

# Modules shared by the nn4 family (FaceNet table 2 / OpenFace nn4.def.lua), pools as in nn4.
NN4_MODULES: dict[str, InceptionSpec] = {
    "3a": InceptionSpec(192, (_b(3, 96, 128), _b(5, 16, 32)), MAX_S2, 32, 64),
    "3b": InceptionSpec(256, (_b(3, 96, 128), _b(5, 32, 64)), L2_S3, 64, 64),
    "3c": InceptionSpec(320, (_b(3, 128, 256, 2), _b(5, 32, 64, 2)), MAX_S2, None, None),
    "4a": InceptionSpec(640, (_b(3, 96, 192), _b(5, 32, 64)), L2_S3, 128, 256),
    "4b": InceptionSpec(640, (_b(3, 112, 224), _b(5, 32, 64)), L2_S3, 128, 224),
    "4c": InceptionSpec(640, (_b(3, 128, 256), _b(5, 32, 64)), L2_S3, 128, 192),
    "4d": InceptionSpec(640, (_b(3, 144, 288), _b(5, 32, 64)), L2_S3, 128, 160),
    "4e": InceptionSpec(640, (_b(3, 160, 256, 2), _b(5, 64, 128, 2)), MAX_S2, None, None),
    # nn4 drops FaceNet's 5x5 branch in the 3x3-sized 5a/5b.
    "5a": InceptionSpec(1024, (_b(3, 192, 384),), L2_S3, 128, 384),
    "5b": InceptionSpec(896, (_b(3, 192, 384),), MAX_S2, 128, 384),
}


def _nn4() -> list[tuple[str, InceptionSpec]]:
    return [(k, NN4_MODULES[k]) for k in ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]


def _nn4_small1() -> list[tuple[str, InceptionSpec]]:
    # nn4 without 4c/4d; OpenFace also gave its pools the padding/stride that keep map sizes.
    pools = {
        "3a": Pool("max", 3, 1, 1), "3b": Pool("l2", 3, 1), "3c": Pool("max", 3, 2, 1),
        "4a": Pool("l2", 3, 1), "4b": Pool("l2", 3, 1), "4e": Pool("max", 3, 2, 1),
        "5a": Pool("l2", 3, 1), "5b": Pool("max", 3, 1, 1),
    }
    return [(k, _with_pool(NN4_MODULES[k], pools[k])) for k in pools]


def _nn4_small2() -> list[tuple[str, InceptionSpec]]:
    # nn4 without 4b/4c/4d, and thinner 5a/5b (736 channels).
    return [(k, NN4_MODULES[k]) for k in ("3a", "3b", "3c", "4a", "4e")] + [
        ("5a", InceptionSpec(1024, (_b(3, 96, 384),), L2_S3, 96, 256)),
        ("5b", InceptionSpec(736, (_b(3, 96, 384),), MAX_S2, 96, 256)),
    ]


def _nn2() -> list[tuple[str, InceptionSpec]]:
    # FaceNet's NN2: nn4 with the 5x5 branches kept in 5a/5b (1024 channels).
    return [(k, NN4_MODULES[k]) for k in ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e")] + [
        ("5a", InceptionSpec(1024, (_b(3, 192, 384), _b(5, 48, 128)), L2_S3, 128, 384)),
        ("5b", InceptionSpec(1024, (_b(3, 192, 384), _b(5, 48, 128)), MAX_S2, 128, 384)),
    ]


def _with_pool(spec: InceptionSpec, pool: Pool) -> InceptionSpec:
    return InceptionSpec(spec.in_channels, spec.branches, pool, spec.pool_proj, spec.one_by_one)


LAYOUTS = {
    "nn4": _nn4,
    "nn4.small1": _nn4_small1,
    "nn4.small2": _nn4_small2,
    "nn2": _nn2,
}
ARCHITECTURE_NAMES = tuple(LAYOUTS)


class FaceNetInception(nn.Module):
    """Stem (conv 7x7, LRN, conv 1x1/3x3, LRN), inception modules, global average, linear, L2."""

    input_size = INPUT_SIZE

    def __init__(self, architecture: str = "nn4.small2", embedding_dim: int = 128):
        super().__init__()
        if architecture not in LAYOUTS:
            raise UnknownModel(
                f"Unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURE_NAMES)}.")
        self.architecture = architecture
        self.stem = nn.Sequential(OrderedDict([
            ("conv1", conv_bn_relu(3, 64, 7, 2, 3)),
            ("pool1", nn.MaxPool2d(3, 2, 1)),
            # FaceNet says "norm"; OpenFace (like GoogLeNet) used cross-channel LRN, whose
            # alpha is divided by the window size in both Torch and PyTorch.
            ("norm1", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)),
            ("conv2", conv_bn_relu(64, 64, 1)),
            ("conv3", conv_bn_relu(64, 192, 3, 1, 1)),
            ("norm2", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)),
            ("pool2", nn.MaxPool2d(3, 2, 1)),
        ]))
        modules = LAYOUTS[architecture]()
        self.inception = nn.Sequential(OrderedDict((name, Inception(spec)) for name, spec in modules))
        final_channels = modules[-1][1].out_channels
        self.embedding = nn.Linear(final_channels, embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images / 255.0)
        x = self.inception(x)
        # OpenFace's 3x3 average pool over the 3x3 map (7x7 for nn2 at 224) is a global average;
        # saying so lets the networks take larger inputs too.
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.normalize(self.embedding(x), p=2, dim=1)


def build_nn4(record: ModelRecord, weights_path: str | Path | None = None) -> FaceNetInception:
    """The network `record.architecture` names, with a checkpoint's `state_dict` when given."""
    model = FaceNetInception(record.architecture, record.embedding_dim)
    if weights_path is not None:
        from ..formats.checkpoints import load_state_dict

        load_state_dict(weights_path, model, record.architecture)
    return model


def default_record(architecture: str, embedding_dim: int = 128) -> ModelRecord:
    """A record for an untrained architecture: OpenFace's alignment at 96, no weights."""
    if architecture not in LAYOUTS:
        raise UnknownModel(
            f"Unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURE_NAMES)}.")
    return ModelRecord(
        name=architecture,
        architecture=architecture,
        align=get_spec("outerEyesAndNose", INPUT_SIZE),
        embedding_dim=embedding_dim,
        weights=None,
        threshold=DEFAULT_THRESHOLD,
        description=f"FaceNet/OpenFace {architecture} inception network (untrained architecture).",
    )
