"""`facenet train --nproc-per-node N` or under torchrun: DistributedDataParallel over N processes.

`facenet train --nproc-per-node N` (training/launch.py) starts N ranks on this machine with
RANK, WORLD_SIZE, LOCAL_RANK and the path of a FileStore (STORE_ENV) in their environment: they
meet through that file, and nothing listens on a port but gloo's own connections on loopback.
torchrun starts N copies of the command with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT instead (its TCPStore listens on every interface at MASTER_PORT). Without either
(or with WORLD_SIZE 1) nothing here is used.

The run equals a single process training on the same global P x K batch:

* every rank draws the same global batch (the sampler is seeded by seed and epoch only) and
  embeds its contiguous share of it (`share`);
* the shares' embeddings are gathered with an all-gather that keeps gradients, so triplets are
  mined and the loss computed on the whole batch, identically on every rank;
* batch norm uses the statistics of the global batch (`GlobalBatchNorm2d`; PyTorch's
  SyncBatchNorm refuses CPU tensors);
* DDP averages the gradients. Each rank backpropagates the same loss L through collectives
  whose backward sums over ranks, so the ranks' gradients add up to N dL/dw and their average
  is the single-process gradient.

Only rank 0 writes files and prints; decisions that depend on the clock or on a write (stop
after --minutes, a failed save) are taken by rank 0 and broadcast, so no rank waits forever for
one that left.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import FacenetError, UsageError


# Set by `facenet train --nproc-per-node N` (training/launch.py) in each rank's environment: the
# path of the FileStore through which the ranks meet, in a private folder. No TCP store listens.
STORE_ENV = "FACENET_TRAIN_STORE"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def launched_by_torchrun() -> bool:
    """True when the environment asks for more than one process (torchrun, or `facenet train
    --nproc-per-node`, sets WORLD_SIZE)."""
    return _env_int("WORLD_SIZE", 1) > 1


def launched_by_facenet() -> bool:
    """True in a rank started by `facenet train --nproc-per-node N` (a file store, no torchrun)."""
    return launched_by_torchrun() and bool(os.environ.get(STORE_ENV))


def env_world_size() -> int:
    """The number of processes the environment asks for (1 without torchrun)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def env_rank() -> int:
    """This process's rank from the environment (0 without torchrun); needs no torch import."""
    return _env_int("RANK", 0) if launched_by_torchrun() else 0


@dataclass
class Distributed:
    """The process group of a torchrun launch; `None` stands for a single process everywhere."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    collectives: "dist.ProcessGroup"  # gathers and batch-norm sums, apart from DDP's own traffic
    control: "dist.ProcessGroup"  # small CPU messages from rank 0 (gloo, also beside nccl)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def from_main(self, value: int) -> int:
        """Rank 0's `value` on every rank."""
        message = torch.tensor([value], dtype=torch.int64)
        dist.broadcast(message, src=0, group=self.control)
        return int(message.item())

    def gather_batch(self, local: torch.Tensor, pk_share: int) -> torch.Tensor:
        """The global batch's embeddings, in the single-process order, with gradients.

        Each rank holds [its P x K share, its extra-image share]; the global order is all
        P x K rows (rank by rank) then all extra rows."""
        parts = all_gather_with_grad(local, self.collectives)
        return torch.cat([p[:pk_share] for p in parts] + [p[pk_share:] for p in parts])


# Collectives that keep gradients. torch.distributed.nn.functional has them but is deprecated (a
# FutureWarning per call); these two are all the training needs. Both backward passes sum the
# gradients of every rank's loss: the adjoint of a sum over ranks.


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllReduceSum.apply(grad, ctx.group), None


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.rows = group, len(tensor)
        parts = [torch.empty_like(tensor, memory_format=torch.contiguous_format)
                 for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank's gradient for every row, summed; this rank keeps the rows it gave.
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        return total[rank * ctx.rows:(rank + 1) * ctx.rows], None


def all_reduce_with_grad(tensor: torch.Tensor, group) -> torch.Tensor:
    """The sum of `tensor` over the ranks of `group`, differentiable."""
    return _AllReduceSum.apply(tensor, group)


def all_gather_with_grad(tensor: torch.Tensor, group) -> list[torch.Tensor]:
    """Every rank's `tensor` (equal shapes), in rank order, differentiable."""
    return list(_AllGather.apply(tensor, group).chunk(dist.get_world_size(group)))


def share(count: int, rank: int, world_size: int) -> slice:
    """Rank's contiguous part of `count` items (count is a multiple of world_size)."""
    size = count // world_size
    return slice(rank * size, (rank + 1) * size)


def check_divisible(people_per_batch: int, images_per_person: int, distill_images: int, world_size: int) -> None:
    batch = people_per_batch * images_per_person
    if batch % world_size or distill_images % world_size:
        raise UsageError(
            f"With {world_size} processes the batch is split evenly over them, but P x K = {batch}"
            + (f" and --distill-images {distill_images}" if distill_images else "")
            + f" must then be multiples of {world_size}; change --people-per-batch, --images-per-person"
            + (" or --distill-images" if distill_images else "") + " or --nproc-per-node.")


@contextmanager
def distributed_session(device: torch.device) -> Iterator[Distributed | None]:
    """The process group of this torchrun launch (None without torchrun), closed at the end.

    gloo on the CPU, nccl on GPUs (each rank on cuda:LOCAL_RANK)."""
    if not launched_by_torchrun():
        yield None
        return
    store = os.environ.get(STORE_ENV)
    needed = ("RANK", "LOCAL_RANK") if store else ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in needed if k not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE is set but {', '.join(missing)} is not; start several processes with "
                         "`facenet train --nproc-per-node N ...` (one machine) or `torchrun ... -m facenet_cli "
                         "train ...`.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    keep_gloo_on_loopback()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    owned = not dist.is_initialized()
    if owned:
        if store:
            # The ranks meet through a file: nothing listens for the rendezvous (torchrun's
            # TCPStore listens on every interface).
            dist.init_process_group(backend=backend, init_method=f"file://{store}", rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
        else:
            dist.init_process_group(backend=backend)
    try:
        session = Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=int(os.environ["LOCAL_RANK"]), backend=backend,
                              collectives=dist.new_group(backend=backend), control=dist.new_group(backend="gloo"))
        yield session
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def keep_gloo_on_loopback() -> None:
    """On one machine (a file store, or MASTER_ADDR on loopback) gloo's and nccl's own
    connections stay on the loopback interface too.

    Gloo binds (and listens for its peers) on the address the machine's host name resolves to
    (its network address), not on MASTER_ADDR; GLOO_SOCKET_IFNAME names the interface instead,
    NCCL_SOCKET_IFNAME the same for nccl's bootstrap. A value the user set wins."""
    import ipaddress
    import socket

    host = os.environ.get("MASTER_ADDR", "")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not (loopback or os.environ.get(STORE_ENV)):
        return
    names = [name for _, name in socket.if_nameindex()]
    if "lo" in names:  # Linux's loopback interface; elsewhere the libraries' defaults stay
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")


def rank_device(device: torch.device, session: Distributed | None) -> torch.device:
    if session is None or device.type != "cuda":
        return device
    return torch.device("cuda", session.local_rank)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch across all ranks.

    Two passes, as a single BatchNorm computes them (the mean first, then the mean squared
    deviation from it), each an all-reduce that keeps gradients. Running statistics are
    updated exactly as BatchNorm2d updates them (unbiased variance). In eval mode, or in a
    single process, it is BatchNorm2d."""

    group: "dist.ProcessGroup | None" = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.group is not None):
            return super().forward(x)
        local = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        count = all_reduce_with_grad(local, self.group)
        mean = all_reduce_with_grad(x.sum(dim=(0, 2, 3)), self.group) / count
        centred = x - mean[None, :, None, None]
        var = all_reduce_with_grad(centred.square().sum(dim=(0, 2, 3)), self.group) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                n = count.detach()
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def use_global_batch_norm(model: nn.Module, group: "dist.ProcessGroup") -> nn.Module:
    """Every BatchNorm2d of `model` turned into a GlobalBatchNorm2d on `group`, in place
    (same parameters and buffers, so state dicts and checkpoints are unchanged)."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
            module.group = group
    return model


def wrap_ddp(model: nn.Module, session: Distributed, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    use_global_batch_norm(model, session.collectives)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


class OtherRankFailed(FacenetError):
    """Rank 0 could not do its part (it says why); the other ranks stop with it."""


__all__ = ["STORE_ENV", "Distributed", "GlobalBatchNorm2d", "OtherRankFailed", "check_divisible",
           "distributed_session", "env_rank", "env_world_size", "launched_by_facenet", "launched_by_torchrun", "rank_device", "share",
           "use_global_batch_norm", "wrap_ddp"]
