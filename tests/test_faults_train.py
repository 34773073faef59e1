"""`facenet train` under faults: a real SIGKILL during an epoch and while a checkpoint is being
written, a full disk while saving, damaged checkpoints as --model, --init and --resume. After
each, the run resumes to weights bit-identical to an uninterrupted run (CPU, one thread)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facenet_cli.formats.checkpoints import load_checkpoint
from facenet_cli.cli import app
from facenet_cli.training.train import train

from .conftest import ROOT, fill_disk
from .test_train import (SMALL_CLI, aligned, aligned_all, assert_same_weights, one_thread, small,  # noqa: F401
                         straight_run, weights)

runner = CliRunner()
# One thread: the killed subprocess must compute exactly like this process (test_train's
# `one_thread` fixture sets the same here), and on busy shared cores threads only contend.
pytestmark = pytest.mark.slow  # training runs killed and resumed (~1 min)

THREADS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CHECKPOINT_TEMP = re.compile(r"^\.(last\.pt|checkpoint-epoch\d{3}\.pt)\.tmp-\d+-[0-9a-f]+$")


def start_training(aligned: Path, out: Path, epochs: int = 3) -> subprocess.Popen:
    command = [sys.executable, "-m", "facenet_cli", "train", str(aligned), str(out), *SMALL_CLI,
               "--epochs", str(epochs), "--json"]
    return subprocess.Popen(command, cwd=ROOT, env=THREADS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def temps(out: Path) -> list[str]:
    return sorted(name for name in os.listdir(out) if CHECKPOINT_TEMP.match(name)) if out.is_dir() else []


def error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def resume_cli(out: Path, *extra: str):
    return runner.invoke(app, ["train", "--resume", str(out), *extra])


# ---------------------------------------------------------------- kill -9


def test_sigkill_during_an_epoch_then_resume_equals_the_uninterrupted_run(aligned, straight_run, tmp_path):
    out = tmp_path / "run"
    process = start_training(aligned, out)
    try:
        # "epoch 1: loss ..." is printed after epoch 1's files are saved, right before epoch 2
        # starts; an epoch takes seconds here, the kill microseconds.
        for line in process.stderr:
            if line.startswith("epoch 1:"):
                break
        else:
            pytest.fail(f"the run ended before epoch 1 (exit {process.wait()})")
        kill(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not (out / "checkpoint-epoch002.pt").exists() and temps(out) == []

    result = resume_cli(out)
    assert result.exit_code == 0, result.output
    assert_same_weights(weights(out / "last.pt"), weights(straight_run / "last.pt"))
    assert_same_weights(weights(out / "checkpoint-epoch002.pt"), weights(straight_run / "checkpoint-epoch002.pt"))
    losses = [[row["loss"] for row in load_checkpoint(run / "last.pt")["history"]] for run in (out, straight_run)]
    assert losses[0] == losses[1]


def kill_while_writing(aligned: Path, out: Path, target: str) -> str:
    """Start a run and SIGKILL it while epoch 1's `target` file is being written; returns the
    temporary file it left. The rename may win the race against the kill: then try again."""
    for attempt in range(5):
        shutil.rmtree(out, ignore_errors=True)
        process = start_training(aligned, out)
        try:
            deadline = time.monotonic() + 300
            # Epoch 0 is complete once its last.pt exists; the next write of `target` is epoch 1's.
            while not (out / "last.pt").exists():
                assert process.poll() is None and time.monotonic() < deadline, "no epoch 0 within 5 minutes"
                time.sleep(0.005)
            while not any(name.startswith(f".{target}.tmp-") for name in temps(out)):
                assert process.poll() is None and time.monotonic() < deadline, f"no {target} write seen"
                time.sleep(0.0005)
            kill(process)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        left = [name for name in temps(out) if name.startswith(f".{target}.tmp-")]
        if left:  # the process died with the file half written
            return left[0]
    pytest.fail(f"five kills all landed after {target} was renamed into place")


@pytest.mark.parametrize("target", ["checkpoint-epoch001.pt", "last.pt"])
def test_sigkill_while_a_checkpoint_is_written_then_resume(aligned, straight_run, tmp_path, target):
    out = tmp_path / "run"
    kill_while_writing(aligned, out, target)
    # The half-written file is only under its temporary name; every real name holds a whole file.
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    for path in out.glob("checkpoint-epoch*.pt"):
        load_checkpoint(path)
    if target == "last.pt":  # killed after epoch 1's checkpoint file was complete
        assert_same_weights(weights(out / "checkpoint-epoch001.pt"), weights(straight_run / "checkpoint-epoch001.pt"))

    result = resume_cli(out)
    assert result.exit_code == 0, result.output
    assert temps(out) == []  # the dead run's temporary file was removed
    assert load_checkpoint(out / "last.pt")["epoch"] == 3
    assert_same_weights(weights(out / "last.pt"), weights(straight_run / "last.pt"))


# ---------------------------------------------------------------- full disk


def test_full_disk_while_saving_keeps_the_previous_checkpoint_resumable(aligned, straight_run, small_disk):
    disk = small_disk(160 * 1024)  # one epoch's files are about 80 MB
    out = disk / "run"
    train(small(aligned, out, epochs=1))
    before = (out / "last.pt").read_bytes()
    fill_disk(disk, leave_bytes=1 << 20)

    result = resume_cli(out, "--epochs", "2")
    assert result.exit_code == 1, result.output
    line = error_line(result.stderr)
    assert line.startswith("Error: The disk is full while writing") and str(out) in line
    assert (out / "last.pt").read_bytes() == before  # untouched, still epoch 1
    assert temps(out) == [] and not (out / "checkpoint-epoch002.pt").exists()

    (disk / ".filler").unlink()
    result = resume_cli(out, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert_same_weights(weights(out / "last.pt"), weights(straight_run / "checkpoint-epoch002.pt"))


# ---------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def damaged(straight_run, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("damaged")
    good = (straight_run / "checkpoint-epoch001.pt").read_bytes()
    files = {"truncated": good[: len(good) // 2], "random": os.urandom(4096), "empty": b""}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("kind", ["truncated", "random", "empty"])
def test_damaged_checkpoint_as_model_is_one_sentence(aligned, damaged, tmp_path, kind):
    result = runner.invoke(app, ["represent", str(aligned), str(tmp_path / "reps"), "--model", str(damaged[kind]),
                                 "--device", "cpu"])
    assert result.exit_code == 1, result.output
    line = error_line(result.stderr)
    assert str(damaged[kind]) in line and "damaged or not a PyTorch checkpoint" in line
    assert not (tmp_path / "reps" / "reps.csv").exists()


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_damaged_checkpoint_as_init_is_one_sentence(aligned, damaged, tmp_path, kind):
    result = runner.invoke(app, ["train", str(aligned), str(tmp_path / "run"), "--init", str(damaged[kind]),
                                 "--people-per-batch", "4", "--images-per-person", "3", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert str(damaged[kind]) in error_line(result.stderr)
    assert not (tmp_path / "run").exists()


def test_damaged_last_checkpoint_on_resume_points_at_the_epoch_files(straight_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])
    result = resume_cli(out, "--epochs", "4")
    assert result.exit_code == 1, result.output
    line = error_line(result.stderr)
    assert str(out / "last.pt") in line and "checkpoint-epochNNN.pt" in line
