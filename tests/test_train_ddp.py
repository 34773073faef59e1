"""`facenet train --nproc-per-node 2` and under torchrun: 2 CPU processes (gloo) on a few real
LFW people.

The 2-process run follows the single-process run with the same global batch, only rank 0
reports, every connection stays on 127.0.0.1, and a resumed 2-process run continues exactly.
facenet's own launcher (`--nproc-per-node`) gives torchrun's result bit for bit and listens on
no port but gloo's own on loopback (torchrun's store listens on every interface). A usage error
is one sentence from rank 0; Ctrl-C says how to resume, and that advice works.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from facenet_cli.align.specs import get_spec
from facenet_cli.formats.checkpoints import load_checkpoint
from facenet_cli.errors import UsageError
from facenet_cli.align.job import AlignJob, align_tree
from facenet_cli.training.distributed import GlobalBatchNorm2d, check_divisible
from facenet_cli.training.train import ctrl_c_after_block

from ._sockets import LOOPBACK, SocketWatcher, listeners, process_tree
from .helpers import copy_people

pytestmark = pytest.mark.slow  # real 2-process training runs (minutes in all)

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon"]
# P x K = 12 images a batch, 6 per process. SGD with a small step: the miners' choices are
# discrete, so a large step turns float rounding (a different summation order across 2
# processes) into other triplets and the runs drift apart, as a single process on 1 or 2
# threads also does (docs/TRAINING.md, "Training on several processes", has the figures).
SETTINGS = ["--arch", "nn4.small2", "--people-per-batch", "4", "--images-per-person", "3", "--batches-per-epoch", "2",
            "--device", "cpu", "--seed", "7", "--optimizer", "sgd", "--lr", "0.01", "--miner", "batch-hard", "--json"]
EPOCHS = 2
# Relative agreement of each epoch's mean loss with the single-process run (epoch 1, epoch 2).
# The first batch agrees to ~1e-5 (float rounding only), but the miner's choices are discrete,
# so rounding grows through the updates into other triplets: a single process on 1 and on 2
# threads (another summation order, nothing else) differs by 0.1 % in epoch 1, 1 % in epoch 2
# and 15 % in epoch 3 of this setting; 2 processes against 1 measured 0.04 % and 4.6 %
# (docs/TRAINING.md, "Training on several processes"). Epoch 1 is held tight, epoch 2 loosely; the loss moves by >20 %.
LOSS_RTOL = (5e-3, 0.1)


@pytest.fixture(scope="module")
def aligned(lfw_images, tmp_path_factory) -> Path:
    """4 images of each of 6 people, aligned for nn4 (96 px outerEyesAndNose)."""
    root = tmp_path_factory.mktemp("ddp-data")
    raw = copy_people(lfw_images, root / "raw", {p: 4 for p in PEOPLE})
    # HOG's crops: the loss tolerances below were measured on them
    align_tree(raw, root / "aligned", AlignJob(spec=get_spec("outerEyesAndNose"), fallback="center", detector="hog"), workers=1)
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


def run_torchrun(*args: str) -> tuple[dict, str, set, int]:
    """`torchrun --nproc-per-node 2 -m facenet_cli train ARGS` on 127.0.0.1: (JSON, stderr, sockets, port)."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "facenet_cli", "train", *args]
    return (*_run_watched(command), port)  # json.loads: rank 0's document alone


def run_launcher(*args: str) -> tuple[dict, str, set]:
    """`facenet train ARGS --nproc-per-node 2`: (JSON, stderr, sockets of its process tree)."""
    return _run_watched([sys.executable, "-m", "facenet_cli", "train", *args, "--nproc-per-node", "2"])


def _run_watched(command: list[str]) -> tuple[dict, str, set]:
    """Run a training command to its end, one thread a process: (its JSON, stderr, the TCP sockets
    its process tree held)."""
    process = subprocess.Popen(command, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = SocketWatcher(process)
    watcher.start()
    stdout, stderr = process.communicate(timeout=300)
    watcher.join()
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr, watcher.sockets


@pytest.fixture(scope="module")
def runs(aligned, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-runs")
    single = run_single(str(aligned), str(root / "single"), "--epochs", str(EPOCHS), *SETTINGS)
    ddp, stderr, sockets, port = run_torchrun(str(aligned), str(root / "ddp"), "--epochs", str(EPOCHS), *SETTINGS)
    own, own_stderr, own_sockets = run_launcher(str(aligned), str(root / "own"), "--epochs", str(EPOCHS), *SETTINGS)
    return {"root": root, "single": single, "ddp": ddp, "stderr": stderr, "sockets": sockets, "port": port,
            "own": own, "own_stderr": own_stderr, "own_sockets": own_sockets}


# ---------------------------------------------------------------- tests


def test_two_processes_follow_the_single_process_loss(runs):
    single, ddp = runs["single"]["history"], runs["ddp"]["history"]
    assert [r["epoch"] for r in ddp] == list(range(1, EPOCHS + 1))
    assert [r["triplets_per_batch"] for r in ddp] == [r["triplets_per_batch"] for r in single]
    for one, two, rtol in zip(single, ddp, LOSS_RTOL):
        assert two["loss"] == pytest.approx(one["loss"], rel=rtol), (one["epoch"], one["loss"], two["loss"])
    # The loss moved by more than the tolerance, so the updates themselves were compared (with
    # torch 2.13 on this machine: 0.3475 -> 0.2901, 16.5 %; the 2 runs agree within 0.7 %; with
    # AVX2 kernels forced (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2) 16.5 % and 1.7 %;
    # another AVX-512 machine moved 15 %). The move comes from the setting, not from rounding, so
    # this 10 % bar keeps a 1.5x margin on every CPU measured.
    assert abs(single[-1]["loss"] - single[0]["loss"]) > LOSS_RTOL[-1] * single[0]["loss"]


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


def test_own_launcher_trains_as_torchrun_does(runs):
    """`facenet train --nproc-per-node 2` runs the same 2 ranks: torchrun's losses and weights, bit
    for bit, hence the single-process comparisons above hold for it too."""
    own, ddp, single = runs["own"]["history"], runs["ddp"]["history"], runs["single"]["history"]
    assert [r["loss"] for r in own] == [r["loss"] for r in ddp]
    assert [r["triplets_per_batch"] for r in own] == [r["triplets_per_batch"] for r in single]
    for one, two, rtol in zip(single, own, LOSS_RTOL):
        assert two["loss"] == pytest.approx(one["loss"], rel=rtol), (one["epoch"], one["loss"], two["loss"])
    theirs = load_checkpoint(Path(runs["ddp"]["out"]) / "last.pt")["state_dict"]
    ours = load_checkpoint(Path(runs["own"]["out"]) / "last.pt")["state_dict"]
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    # Only rank 0 reported: one progress line per epoch, one JSON document (parsed above).
    assert runs["own_stderr"].count("Training on 24 images of 6 people") == 1
    assert runs["own_stderr"].count("epoch 1: loss") == 1


def test_own_launcher_listens_on_loopback_only(runs):
    """What `ss -ltnp` would show for the run's processes: torchrun's store listens on every
    interface; facenet's launcher has no store socket at all (a file), and gloo's listeners
    between the ranks are on 127.0.0.1."""
    assert any(host in ("0.0.0.0", "::") and port == runs["port"] for host, port in listeners(runs["sockets"]))
    sockets = runs["own_sockets"]
    assert any(not listening for *_, listening in sockets)  # the watcher saw the ranks' connections
    assert listeners(sockets) and all(host in LOOPBACK for host, _ in listeners(sockets)), listeners(sockets)
    for local, local_port, remote, _, listening in sockets:
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


# ---------------------------------------------------------------- usage errors, Ctrl-C, a dying rank


def facenet_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facenet_cli", "train", *args], env=one_thread_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_a_usage_error_is_one_sentence_from_rank_0(aligned, tmp_path):
    # Found before any rank starts (P x K = 9 does not split over 2 processes).
    uneven = facenet_train(str(aligned), str(tmp_path / "a"), "--people-per-batch", "3", "--images-per-person", "3",
                           "--device", "cpu", "--nproc-per-node", "2")
    assert uneven.returncode == 2
    assert uneven.stderr.splitlines() == [
        "Error: With 2 processes the batch is split evenly over them, but P x K = 9 must then be multiples of 2; "
        "change --people-per-batch, --images-per-person or --nproc-per-node."]
    # Found by every rank (each loads the data): rank 0 alone says it.
    missing = facenet_train(str(tmp_path / "nowhere"), str(tmp_path / "b"), "--device", "cpu", "--epochs", "1",
                            "--nproc-per-node", "2")
    assert missing.returncode == 2
    assert len(missing.stderr.splitlines()) == 1 and missing.stderr.startswith("Error: The aligned folder ")
    assert not (tmp_path / "b").exists()
    # --nproc-per-node is facenet's own launcher: inside a torchrun rank it is refused.
    nested = subprocess.run([sys.executable, "-m", "facenet_cli", "train", str(aligned), str(tmp_path / "c"),
                             "--nproc-per-node", "2"], env={**one_thread_env(), "WORLD_SIZE": "2", "RANK": "0"},
                            capture_output=True, text=True, timeout=120)
    assert nested.returncode == 2 and nested.stderr.startswith("Error: --nproc-per-node starts facenet's own")

    # Under torchrun the ranks are torchrun's: each rank but rank 0 ends quietly (exit 2), rank 0
    # prints the sentence once. torchrun itself then reports the failed ranks with its own
    # ChildFailedError traceback and exit code 1: that is printed by the torchrun process, which
    # no rank can silence (docs/TRAINING.md: use --nproc-per-node on one machine).
    # (--tee 3: torchrun prefixes each rank's lines with [default<rank>]:)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "--tee", "3", "-m", "facenet_cli", "train", str(tmp_path / "nowhere"),
               str(tmp_path / "d"), "--device", "cpu", "--epochs", "1"]
    under = subprocess.run(command, env=one_thread_env(), capture_output=True, text=True, timeout=300)
    assert under.returncode != 0
    errors = [line for line in under.stderr.splitlines() if "Error: " in line and "]:" in line]
    assert len(errors) == 1 and errors[0].startswith("[default0]:Error: The aligned folder "), under.stderr[-3000:]
    assert "exitcode  : 2" in under.stderr  # rank 0's own exit code, in torchrun's summary


def interrupt_after_first_epoch(out: Path, *args: str) -> subprocess.CompletedProcess:
    """A real SIGINT to `facenet train ... OUT ARGS` once its epoch 1 checkpoint is written."""
    process = subprocess.Popen([sys.executable, "-m", "facenet_cli", "train", *args], env=one_thread_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-epoch001.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_ctrl_c_says_how_to_resume_and_that_works(aligned, tmp_path):
    out = tmp_path / "run"
    settings = [s for s in SETTINGS if s != "--json"]
    stopped = interrupt_after_first_epoch(out, str(aligned), str(out), "--epochs", "40", *settings)
    assert stopped.returncode == 130
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted") and f"facenet train --resume {out}" in last, stopped.stderr[-2000:]
    # "Rerun the same command" (the old hint) is refused: OUT holds a run now.
    again = facenet_train(str(aligned), str(out), "--epochs", "40", *settings)
    assert again.returncode == 2 and "already holds a training run" in again.stderr
    # The advice given works.
    resumed = facenet_train("--resume", str(out), "--epochs", "2", "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["epochs"] == 2


def test_ctrl_c_during_a_checkpoint_write_waits_for_it_then_stops():
    # CI once sent the launcher's Ctrl-C while rank 0 imported matplotlib for the loss plot:
    # "ImportError: initialization failed" and exit 1 instead of the resume hint.
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_after_block():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the signal is delivered while the block still runs
            finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_of_the_launcher_stops_every_rank_with_one_sentence(aligned, tmp_path):
    out = tmp_path / "run"
    settings = [s for s in SETTINGS if s != "--json"]
    stopped = interrupt_after_first_epoch(out, str(aligned), str(out), "--epochs", "40", *settings,
                                          "--nproc-per-node", "2")
    assert stopped.returncode == 130
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"--resume {out}" in errors[0], stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr


def test_a_rank_that_dies_ends_the_run_with_one_sentence(aligned, tmp_path):
    out = tmp_path / "run"
    settings = [s for s in SETTINGS if s != "--json"]
    process = subprocess.Popen([sys.executable, "-m", "facenet_cli", "train", str(aligned), str(out), "--epochs", "40",
                                *settings, "--nproc-per-node", "2"], env=one_thread_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-epoch001.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    ranks = sorted(pid for pid in process_tree(process.pid)
                   if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(process.pid))
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        f"Error: Training process 1 of 2 was killed by SIGKILL (out of memory, or killed?) and the others were "
        f"stopped with it; resume with `facenet train --resume {out} --nproc-per-node 2`.")
    assert "Traceback" not in stderr
    assert not any(Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
                   for pid in ranks)
