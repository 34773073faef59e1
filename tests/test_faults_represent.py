"""Fault injection for represent and lfw-roc: a full disk, kill -9 mid-run, damaged inputs.

Real faces (LFW crops aligned here), the real network, the real CLI; a full disk is a real tiny
tmpfs, a kill is a real SIGKILL of a real `python -m facenet_cli represent` process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facenet_cli.align.specs import get_spec
from facenet_cli.align.job import AlignJob, align_tree
from facenet_cli.formats.reps import RepsWriter, read_reps

from .conftest import fill_disk
from .helpers import copy_people
from .test_lfw import build, clean_fold, reps_of

OUTPUTS = ("labels.csv", "reps.csv", "reps.npy", "meta.json")


@pytest.fixture(scope="module")
def crops(lfw_images, tmp_path_factory):
    """60 LFW faces aligned for dlib-resnet.v1 (`aligned`), 20 of them (`aligned-20`) and 2
    (`aligned-small`)."""
    root = tmp_path_factory.mktemp("faults-represent")
    raw = copy_people(lfw_images, root / "raw", {"George_W_Bush": 30, "Colin_Powell": 30})
    align_tree(raw, root / "aligned", AlignJob(get_spec("dlib-chip"), upsample=0))
    for name, per_person, people in (("aligned-20", 10, ("George_W_Bush", "Colin_Powell")),
                                     ("aligned-small", 2, ("Colin_Powell",))):
        for person in people:
            (root / name / person).mkdir(parents=True)
            for crop in sorted((root / "aligned" / person).glob("*.png"))[:per_person]:
                shutil.copy(crop, root / name / person / crop.name)
    return root


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def contents(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, hidden ones included, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ---------------------------------------------------------------- a full disk

def test_full_small_disk_is_one_sentence_and_keeps_the_previous_output(crops, small_disk, run_cli):
    out = small_disk(40)  # 40 KB: two faces fit, sixty do not (reps.csv alone is ~90 KB)
    done = run_cli("represent", crops / "aligned-small", out)
    assert done.exit_code == 0, done.output
    before = contents(out)
    assert sorted(before) == sorted(OUTPUTS)

    full = run_cli("represent", crops / "aligned", out, "--batch-size", "8")
    assert full.exit_code == 1, full.output
    line = error_line(full.stderr)
    assert line.startswith("Error: The disk is full while writing ") and line.endswith(".")
    assert temp_files(out) == []
    assert contents(out) == before  # the previous complete output, byte for byte
    assert len(read_reps(out)) == 2


def test_filled_disk_then_freed_gives_the_clean_output(crops, small_disk, run_cli, tmp_path):
    clean = tmp_path / "clean"
    assert run_cli("represent", crops / "aligned-20", clean, "--batch-size", "8").exit_code == 0
    out = small_disk(1024)
    assert run_cli("represent", crops / "aligned-small", out).exit_code == 0
    before = contents(out)
    fill_disk(out, leave_bytes=0)
    full = run_cli("represent", crops / "aligned-20", out, "--batch-size", "8")
    assert full.exit_code == 1, full.output
    assert error_line(full.stderr).startswith("Error: The disk is full while writing ")
    assert temp_files(out) == []
    after = contents(out)
    after.pop(".filler")
    assert after == before

    (out / ".filler").unlink()
    again = run_cli("represent", crops / "aligned-20", out, "--batch-size", "8")
    assert again.exit_code == 0, again.output
    assert contents(out) == contents(clean)


def test_writer_on_a_full_disk_raises_disk_full_and_removes_its_temps(small_disk):
    from facenet_cli.errors import DiskFull

    out = small_disk(16)
    with pytest.raises(DiskFull, match="The disk is full while writing"):
        with RepsWriter(out, 1000, 128, {}) as writer:
            for i in range(1000):
                writer.add(f"a/P/P_{i:04d}.png", "P", np.full(128, 0.123456789))
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- kill -9

def represent_process(aligned: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facenet_cli", "represent", str(aligned), str(out),
                             "--batch-size", "2", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when_writing(process: subprocess.Popen, out: Path, rows: int = 4) -> None:
    """SIGKILL the process once its temporary reps.npy holds `rows` rows (the run is mid-way)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        temps = [p for p in out.glob(f".reps.npy.tmp-{process.pid}-*")] if out.is_dir() else []
        try:
            if temps and temps[0].stat().st_size >= 128 + rows * 128 * 4:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return
        except FileNotFoundError:
            pass
        if process.poll() is not None:
            pytest.fail(f"represent ended (exit {process.returncode}) before it could be killed: "
                        f"{process.stderr.read().decode()[-500:]}")
        time.sleep(0.005)
    process.kill()
    pytest.fail("represent wrote no rows within 120 s")


@pytest.mark.slow  # real processes interrupted or killed
def test_kill_9_mid_run_then_rerun_equals_a_clean_run(crops, run_cli, tmp_path):
    clean = tmp_path / "clean"
    assert run_cli("represent", crops / "aligned-20", clean, "--batch-size", "2", "--device", "cpu").exit_code == 0

    fresh = tmp_path / "fresh"
    process = represent_process(crops / "aligned-20", fresh)
    kill_when_writing(process, fresh)
    assert process.returncode == -signal.SIGKILL
    names = sorted(p.name for p in fresh.iterdir())
    assert not set(names) & set(OUTPUTS), names  # no half file under a real name
    assert any(f".tmp-{process.pid}-" in n for n in names)  # what a kill leaves: temps of a dead process

    again = run_cli("represent", crops / "aligned-20", fresh, "--batch-size", "2", "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert temp_files(fresh) == []  # the rerun removed the dead run's leftovers
    assert contents(fresh) == contents(clean)


@pytest.mark.slow  # real processes interrupted or killed
def test_kill_9_keeps_the_previous_complete_output(crops, run_cli, tmp_path):
    out = tmp_path / "reps"
    assert run_cli("represent", crops / "aligned-small", out).exit_code == 0
    before = contents(out)
    process = represent_process(crops / "aligned-20", out)
    kill_when_writing(process, out)
    leftovers = temp_files(out)
    assert leftovers and all(f"-{process.pid}-" in n for n in leftovers)
    assert {n: b for n, b in contents(out).items() if n not in leftovers} == before
    assert len(read_reps(out)) == 2


# ---------------------------------------------------------------- lfw-roc on damaged inputs

@pytest.fixture
def lfw_reps(tmp_path):
    """A written reps folder and a 10-fold pairs file whose answers are known (all right)."""
    built = build(tmp_path, [clean_fold()] * 10)
    reps = reps_of(built)
    folder = tmp_path / "reps"
    with RepsWriter(folder, len(reps), 2, {"model": "toy"}) as writer:
        for path, row in zip(reps.paths, reps.embeddings):
            writer.add(path, path.split("/")[-2], row)
    return folder, built[0]


def lfw_roc_error(run_cli, reps, pairs, out) -> str:
    result = run_cli("lfw-roc", reps, pairs, out)
    assert result.exit_code == 1, result.output
    assert not out.exists()  # refused before writing
    return error_line(result.stderr)


def test_lfw_roc_non_utf8_labels(lfw_reps, run_cli, tmp_path):
    reps, pairs = lfw_reps
    (reps / "labels.csv").write_bytes((reps / "labels.csv").read_bytes().replace(b"pairs_S0_0", b"pairs_\xe9S0_0"))
    assert "labels.csv is not UTF-8 text" in lfw_roc_error(run_cli, reps, pairs, tmp_path / "eval")


def test_lfw_roc_meta_field_of_the_wrong_type(lfw_reps, run_cli, tmp_path):
    reps, pairs = lfw_reps
    meta = json.loads((reps / "meta.json").read_text())
    (reps / "meta.json").write_text(json.dumps({**meta, "aligned": 5}))
    assert "aligned = 5, but aligned must be the aligned folder's path" in lfw_roc_error(run_cli, reps, pairs,
                                                                                         tmp_path / "eval")


def test_lfw_roc_corrupt_reps_npy(lfw_reps, run_cli, tmp_path):
    reps, pairs = lfw_reps
    data = bytearray((reps / "reps.npy").read_bytes())
    data[200] ^= 0xFF
    (reps / "reps.npy").write_bytes(bytes(data))
    assert "reps.npy does not match the checksum in meta.json" in lfw_roc_error(run_cli, reps, pairs, tmp_path / "eval")


def test_lfw_roc_width_other_than_meta(lfw_reps, run_cli, tmp_path):
    reps, pairs = lfw_reps
    count = len((reps / "labels.csv").read_text().splitlines())
    np.save(reps / "reps.npy", np.random.default_rng(0).normal(size=(count, 3)).astype(np.float32))
    meta = json.loads((reps / "meta.json").read_text())
    meta["dimension"] = 128
    del meta["sha256"]  # as older versions wrote it
    (reps / "meta.json").write_text(json.dumps(meta))
    assert "holds 3-wide rows but meta.json says the model gives 128-d" in lfw_roc_error(run_cli, reps, pairs,
                                                                                         tmp_path / "eval")


def test_lfw_roc_openface_layout_with_faceless_people(tmp_path, run_cli):
    """labels.csv + reps.csv only (another tool's output) where two people had no face at all:
    their pairs count as wrong answers and the command says so."""
    built = build(tmp_path, [clean_fold()] * 10)
    reps = reps_of(built)
    faceless = {"pairs_S2_0", "pairs_B7_1"}
    keep = [i for i, p in enumerate(reps.paths) if p.split("/")[-2] not in faceless]
    folder = tmp_path / "openface"
    folder.mkdir()
    (folder / "labels.csv").write_text("".join(f"1,{reps.paths[i]}\n" for i in keep))
    (folder / "reps.csv").write_text("".join(",".join(f"{v:.9g}" for v in reps.embeddings[i]) + "\n" for i in keep))
    result = run_cli("lfw-roc", folder, built[0], tmp_path / "eval", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["missing_people"] == sorted(faceless) and data["missing_pairs"] == 2
    assert data["accuracy_mean"] == pytest.approx((8 + 2 * 5 / 6) / 10)
    table = run_cli("lfw-roc", folder, built[0], tmp_path / "eval2")
    assert "2 people have no embedding at all (e.g. pairs_B7_1)" in table.stdout


def test_lfw_roc_reps_of_other_images(lfw_reps, run_cli, tmp_path):
    reps, _ = lfw_reps
    other = build(tmp_path, [clean_fold()] * 10, name="other.txt")[0]
    line = lfw_roc_error(run_cli, reps, other, tmp_path / "eval")
    assert "have no embedding" in line and "come from other images" in line
