"""`facenet train` under torchrun: 2 CPU processes (gloo) on a few real LFW people.

The 2-process run follows the single-process run with the same global batch, only rank 0
reports, every connection stays on 127.0.0.1, and a resumed 2-process run continues exactly.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from facenet_cli.align_specs import get_spec
from facenet_cli.checkpoints import load_checkpoint
from facenet_cli.errors import UsageError
from facenet_cli.jobs import AlignJob, align_tree
from facenet_cli.training.distributed import GlobalBatchNorm2d, check_divisible

from .helpers import copy_people

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon"]
# P x K = 12 images a batch, 6 per process. SGD with a small step: the miners' choices are
# discrete, so a large step turns float rounding (a different summation order across 2
# processes) into other triplets and the runs drift apart, as a single process on 1 or 2
# threads also does (README, "Training on several processes", has the figures).
SETTINGS = ["--arch", "nn4.small2", "--people-per-batch", "4", "--images-per-person", "3", "--batches-per-epoch", "2",
            "--device", "cpu", "--seed", "7", "--optimizer", "sgd", "--lr", "0.01", "--miner", "batch-hard", "--json"]
EPOCHS = 2
# Relative agreement of each epoch's mean loss with the single-process run (epoch 1, epoch 2).
# The first batch agrees to ~1e-5 (float rounding only), but the miner's choices are discrete,
# so rounding grows through the updates into other triplets: a single process on 1 and on 2
# threads (another summation order, nothing else) differs by 0.1 % in epoch 1, 1 % in epoch 2
# and 15 % in epoch 3 of this setting; 2 processes against 1 measured 0.04 % and 4.6 %
# (README, "Training on several processes"). Epoch 1 is held tight, epoch 2 loosely; the loss moves by >20 %.
LOSS_RTOL = (5e-3, 0.1)
LOOPBACK = {"127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def aligned(lfw_images, tmp_path_factory) -> Path:
    """4 images of each of 6 people, aligned for nn4 (96 px outerEyesAndNose)."""
    root = tmp_path_factory.mktemp("ddp-data")
    raw = copy_people(lfw_images, root / "raw", {p: 4 for p in PEOPLE})
    align_tree(raw, root / "aligned", AlignJob(spec=get_spec("outerEyesAndNose"), fallback="center"), workers=1)
    return root / "aligned"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_single(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "facenet_cli", "train", *args], env=one_thread_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


# ---------------------------------------------------------------- sockets of a process tree


def process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def decode_address(text: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6} ("0100007F:1F90") as ("127.0.0.1", 8080)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # /proc stores each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        raw = raw[12:]  # an IPv4 address in an IPv6 socket
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def tcp_sockets(inodes: set[str]) -> set[tuple[str, int, str, int, bool]]:
    """(local host, local port, remote host, remote port, listening) of the sockets with these inodes."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                local, remote = decode_address(fields[1]), decode_address(fields[2])
                found.add((*local, *remote, fields[3] == "0A"))
    return found


class SocketWatcher(threading.Thread):
    """Records every TCP socket the process tree under `pid` holds while it runs."""

    def __init__(self, process: subprocess.Popen):
        super().__init__(daemon=True)
        self.process, self.sockets = process, set()

    def run(self) -> None:
        while self.process.poll() is None:
            self.sockets |= tcp_sockets(socket_inodes(process_tree(self.process.pid)))
            time.sleep(0.2)


def run_torchrun(*args: str) -> tuple[dict, str, set, int]:
    """`torchrun --nproc-per-node 2 -m facenet_cli train ARGS` on 127.0.0.1: (JSON, stderr, sockets, port)."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "facenet_cli", "train", *args]
    process = subprocess.Popen(command, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = SocketWatcher(process)
    watcher.start()
    stdout, stderr = process.communicate(timeout=300)
    watcher.join()
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr, watcher.sockets, port  # json.loads: rank 0's document alone


@pytest.fixture(scope="module")
def runs(aligned, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-runs")
    single = run_single(str(aligned), str(root / "single"), "--epochs", str(EPOCHS), *SETTINGS)
    ddp, stderr, sockets, port = run_torchrun(str(aligned), str(root / "ddp"), "--epochs", str(EPOCHS), *SETTINGS)
    return {"root": root, "single": single, "ddp": ddp, "stderr": stderr, "sockets": sockets, "port": port}


# ---------------------------------------------------------------- tests


def test_two_processes_follow_the_single_process_loss(runs):
    single, ddp = runs["single"]["history"], runs["ddp"]["history"]
    assert [r["epoch"] for r in ddp] == list(range(1, EPOCHS + 1))
    assert [r["triplets_per_batch"] for r in ddp] == [r["triplets_per_batch"] for r in single]
    for one, two, rtol in zip(single, ddp, LOSS_RTOL):
        assert two["loss"] == pytest.approx(one["loss"], rel=rtol), (one["epoch"], one["loss"], two["loss"])
    # The loss moved by far more than the tolerance, so the updates themselves were compared.
    assert abs(single[-1]["loss"] - single[0]["loss"]) > 0.2 * single[0]["loss"]


def test_only_rank_0_reports_and_writes(runs):
    out = Path(runs["ddp"]["out"])
    assert runs["stderr"].count("Training on 24 images of 6 people") == 1
    assert runs["stderr"].count("epoch 1: loss") == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-epoch000.pt", "checkpoint-epoch001.pt",
                                                     "checkpoint-epoch002.pt", "last.pt", "loss.csv", "loss.png"]
    assert len((out / "loss.csv").read_text().splitlines()) == EPOCHS + 1
    # The checkpoint is a plain nn4 state dict (no DDP "module." prefix), usable as --model.
    assert not any(k.startswith("module.") for k in load_checkpoint(out / "last.pt")["state_dict"])


def test_every_connection_stays_on_loopback(runs):
    sockets = runs["sockets"]
    assert any(not listening for *_, listening in sockets)  # the watcher saw the run's connections
    for local, local_port, remote, _, listening in sockets:
        if listening and local in ("0.0.0.0", "::"):
            # torchrun's own rendezvous store (a TCPStore) listens on every interface at
            # --master-port; PyTorch has no option to narrow it. Nothing else may.
            assert local_port == runs["port"], (local, local_port)
        else:
            assert local in LOOPBACK and (listening or remote in LOOPBACK), (local, local_port, remote)


def test_resumed_two_process_run_continues_exactly(runs, aligned):
    out = runs["root"] / "resumed"
    first, *_ = run_torchrun(str(aligned), str(out), "--epochs", "1", *SETTINGS)
    assert first["epochs"] == 1
    resumed, *_ = run_torchrun("--resume", str(out), "--epochs", str(EPOCHS), "--json")
    assert resumed["epochs_this_run"] == EPOCHS - 1
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in runs["ddp"]["history"]]
    straight = load_checkpoint(Path(runs["ddp"]["out"]) / "last.pt")["state_dict"]
    again = load_checkpoint(out / "last.pt")["state_dict"]
    assert straight.keys() == again.keys()
    for key in straight:
        assert torch.equal(straight[key], again[key]), key


def test_uneven_split_is_refused():
    with pytest.raises(UsageError, match="multiples of 2"):
        check_divisible(3, 3, 0, 2)
    with pytest.raises(UsageError, match="--distill-images"):
        check_divisible(4, 3, 1, 2)
    check_divisible(4, 3, 2, 2)


def test_global_batch_norm_equals_batch_norm_in_one_process(monkeypatch):
    """The synchronised batch norm's arithmetic, against PyTorch's, in a group of one."""
    import torch.distributed as dist

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        reference = torch.nn.BatchNorm2d(5)
        reference.weight.data.uniform_(0.5, 1.5)
        reference.bias.data.uniform_(-1, 1)
        synced = torch.nn.BatchNorm2d(5)
        synced.load_state_dict(reference.state_dict())
        synced.__class__ = GlobalBatchNorm2d
        synced.group = dist.group.WORLD
        x = torch.randn(6, 5, 7, 7) * 3 + 1
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        upstream = torch.randn(6, 5, 7, 7)
        (reference(x1) * upstream).sum().backward()
        (synced(x2) * upstream).sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(synced.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-5)
        for name, buffer in reference.named_buffers():
            torch.testing.assert_close(dict(synced.named_buffers())[name], buffer, rtol=1e-5, atol=1e-6)
        synced.eval(), reference.eval()
        torch.testing.assert_close(synced(x), reference(x))
    finally:
        dist.destroy_process_group()
