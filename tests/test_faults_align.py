"""Faults injected for real into `facenet align`: a full filesystem, kill -9 of the command (1 and 2
workers) at several points, a worker process killed under it, huge and tiny images. After each,
a rerun must give outputs byte-identical to a clean run and the same report outcomes."""
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
from PIL import Image

from facenet_cli.align.specs import get_spec
from facenet_cli.formats.aligned import read_report
from facenet_cli.atomic import is_temp_name
from facenet_cli.align.job import AlignJob, align_tree

from .helpers import copy_people, png_decodes_fully

pytestmark = pytest.mark.slow  # align runs killed, interrupted and fed huge images (~20 s)

ROOT = Path(__file__).resolve().parents[1]
# Slow enough (upsample 1) to be killed part way; a centre fallback and an unreadable file show
# that resumed outcomes keep what they were, not just "done".
KILL_OPTIONS = ["--upsample", "1", "--fallback", "center"]
KILL_JOB = AlignJob(get_spec("dlib-chip"), upsample=1, fallback="center")


def _snapshot(out: Path) -> tuple[dict[str, bytes], dict[str, tuple]]:
    """(crop bytes by relative path, report outcomes) of an aligned folder."""
    crops = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}
    report = {k: (o.status, tuple(o.outputs), o.detail) for k, o in read_report(out / "align-report.csv").items()}
    return crops, report


def _temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if is_temp_name(p.name)]


def _facenet(*args) -> list[str]:
    return [sys.executable, "-m", "facenet_cli", "align", *map(str, args)]


def _wait_for(predicate, seconds: float = 120.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(x) for x in text]
    return found


def _gone(pid: int) -> bool:
    try:
        state = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:")]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return not state or state[0].split()[1] in ("Z", "X")  # a zombie no longer runs


@pytest.fixture(scope="module")
def kill_tree(tmp_path_factory, lfw_images):
    """40 LFW images, a blank photo (centre fallback) and a corrupt file; and a clean run of them."""
    root = tmp_path_factory.mktemp("kill")
    raw = copy_people(lfw_images, root / "raw", {"George_W_Bush": 40})
    (raw / "Aaa_Blank").mkdir()
    Image.new("RGB", (250, 250), (90, 90, 90)).save(raw / "Aaa_Blank" / "blank.jpg")
    (raw / "Aaa_Blank" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    clean = align_tree(raw, root / "clean", KILL_JOB)
    assert clean.counts["aligned"] == 40 and clean.counts["fallback"] == 1 and clean.counts["unreadable"] == 1
    return raw, _snapshot(root / "clean")


# ---------------------------------------------------------------- kill -9 of the command

@pytest.mark.parametrize("workers, kill_after", [(1, 0), (1, 6), (1, 30), (2, 12)])
def test_kill_9_then_rerun_equals_a_clean_run(kill_tree, tmp_path, workers, kill_after):
    raw, (clean_crops, clean_report) = kill_tree
    out = tmp_path / "out"
    proc = subprocess.Popen(_facenet(raw, out, "--workers", workers, *KILL_OPTIONS),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    if kill_after == 0:  # as soon as the job has claimed the folder, before any crop
        assert _wait_for(lambda: (out / "align-spec.json").exists())
    else:
        assert _wait_for(lambda: len(list(out.rglob("*.png"))) >= kill_after)
    workers_pids = _children(proc.pid) if workers > 1 else []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if workers > 1:
        assert len(workers_pids) == workers
        # The workers die with their parent instead of aligning on as orphans.
        assert _wait_for(lambda: all(_gone(pid) for pid in workers_pids), 5), workers_pids

    crops = list(out.rglob("*.png"))
    assert len(crops) < 42, "the run must be killed part way"
    assert all(png_decodes_fully(p) for p in crops), "a killed run left a truncated image"
    journal = read_report(out / "align-report.csv")
    for outcome in journal.values():  # the journal never claims a crop that is not there
        assert all((out / name).is_file() for name in outcome.outputs)
    assert len([o for o in journal.values() if o.outputs]) >= len(crops) - 2 * workers

    rerun = subprocess.run(_facenet(raw, out, "--workers", workers, "--json", *KILL_OPTIONS),
                           capture_output=True, text=True, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["total"] == 42
    assert summary["earlier"] >= len(journal) - 1  # every finished file kept (the fallback one included)
    if journal.get("Aaa_Blank/blank.jpg"):
        assert summary["counts"]["fallback"]["earlier"] == 1
    assert _snapshot(out) == (clean_crops, clean_report)
    assert not _temp_files(out)


def test_a_worker_killed_under_the_run_ends_it_with_one_sentence(kill_tree, tmp_path):
    """A worker process dies (the OOM killer, a kill): the run stops with one sentence and the
    report of what was done; the rerun completes."""
    raw, (clean_crops, clean_report) = kill_tree
    out = tmp_path / "out"
    proc = subprocess.Popen(_facenet(raw, out, "--workers", "2", *KILL_OPTIONS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert _wait_for(lambda: len(list(out.rglob("*.png"))) >= 8)
    os.kill(_children(proc.pid)[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "A worker process died" in errors[0] and "rerunning the same command resumes" in errors[0]
    assert "Traceback" not in stderr
    assert not _temp_files(out)
    report = read_report(out / "align-report.csv")
    assert report and all((out / name).is_file() for o in report.values() for name in o.outputs)

    rerun = subprocess.run(_facenet(raw, out, "--workers", "2", *KILL_OPTIONS), capture_output=True, text=True,
                           cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr
    assert _snapshot(out) == (clean_crops, clean_report)


def test_ctrl_c_stops_the_workers_and_keeps_what_was_done(kill_tree, tmp_path):
    raw, (clean_crops, clean_report) = kill_tree
    out = tmp_path / "out"
    proc = subprocess.Popen(_facenet(raw, out, "--workers", "2", *KILL_OPTIONS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert _wait_for(lambda: len(list(out.rglob("*.png"))) >= 6)
    workers_pids = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: interrupted; rerun the same command to resume."], stderr
    assert all(_gone(pid) for pid in workers_pids)
    assert not _temp_files(out)
    report = read_report(out / "align-report.csv")
    assert len(report) >= 6 - 4 and all((out / n).is_file() for o in report.values() for n in o.outputs)
    rerun = subprocess.run(_facenet(raw, out, *KILL_OPTIONS), capture_output=True, text=True, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr
    assert _snapshot(out) == (clean_crops, clean_report)


def test_the_portable_parent_watch_ends_an_orphaned_worker(tmp_path):
    """Where prctl is missing, a thread that polls the parent's pid ends the worker."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, os, sys, time\n"
        "from facenet_cli.align.job import die_with_parent\n"
        "def child(parent):\n"
        "    die_with_parent(parent, use_prctl=False)\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('fork').Process(target=child, args=(os.getpid(),))\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = int(parent.stdout.readline())
    time.sleep(0.5)
    assert not _gone(child)
    parent.kill()
    parent.wait()
    assert _wait_for(lambda: _gone(child), 5)


# ---------------------------------------------------------------- a full disk

@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_stops_with_one_sentence_and_the_rerun_completes(run_cli, small_disk, lfw_images, tmp_path,
                                                                    workers):
    raw = copy_people(lfw_images, tmp_path / "raw", {"Serena_Williams": 6, "Gerhard_Schroeder": 6})
    align_tree(raw, tmp_path / "clean", AlignJob(get_spec("dlib-chip")))
    clean = _snapshot(tmp_path / "clean")
    disk = small_disk(300)  # about 7 crops of 38 KB
    out = disk / "out"

    full = run_cli("align", raw, out, "--workers", workers)
    assert full.exit_code == 1, full.output
    lines = [line for line in full.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and lines[0].startswith("Error: The disk is full while writing "), full.stderr
    assert lines[0].endswith("free some space and rerun the same command to resume (finished outputs are kept).")
    assert "Traceback" not in full.output
    assert not _temp_files(out)
    crops = list(out.rglob("*.png"))
    assert 0 < len(crops) < 12 and all(png_decodes_fully(p) for p in crops)
    kept = read_report(out / "align-report.csv")  # the report of what was done is kept
    assert kept and all((out / n).is_file() for o in kept.values() for n in o.outputs)

    subprocess.run(["mount", "-o", "remount,size=4096k", str(disk)], check=True)
    rerun = run_cli("align", raw, out, "--workers", workers, "--json")
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert summary["earlier"] == len([o for o in kept.values() if o.status == "aligned"]) > 0
    assert summary["total"] == 12
    assert _snapshot(out) == clean
    assert not _temp_files(out)


# ---------------------------------------------------------------- huge and tiny images

def test_huge_and_tiny_images_are_outcomes_in_bounded_time(tmp_path, lfw_images):
    """A 5000x3500 photo without a face (17.5 Mpx: searched downscaled, never upsampled), the same
    size with a real face in a corner, and an 8x8 image (with the CNN as second detector)."""
    raw = tmp_path / "raw" / "p"
    raw.mkdir(parents=True)
    ramp = np.linspace(0, 255, 5000, dtype=np.float32)
    wall = (np.add.outer(ramp[:3500], ramp) / 2).astype(np.uint8)
    Image.fromarray(wall).save(raw / "huge-wall.png")
    face = np.asarray(Image.open(lfw_images / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg").convert("RGB"))
    big_face = np.asarray(Image.fromarray(face).resize((500, 500)))
    photo = np.repeat(wall[:, :, None], 3, axis=2)
    photo[2900:3400, 4400:4900] = big_face
    Image.fromarray(photo).save(raw / "huge-face.png")
    Image.new("RGB", (8, 8), (200, 120, 90)).save(raw / "tiny.png")
    started = time.perf_counter()
    report = align_tree(raw.parent, tmp_path / "out", AlignJob(get_spec("dlib-chip"), upsample="auto"))
    assert time.perf_counter() - started < 60
    assert {o.input: o.status for o in report.outcomes} == {
        "p/huge-face.png": "aligned", "p/huge-wall.png": "no-face", "p/tiny.png": "no-face"}
    tiny = tmp_path / "tiny"
    (tiny / "p").mkdir(parents=True)
    shutil.copy(raw / "tiny.png", tiny / "p")
    again = align_tree(tiny, tmp_path / "out-tiny", AlignJob(get_spec("dlib-chip"), detector="hog+cnn",
                                                             fallback="center"))
    assert [(o.status, o.outputs) for o in again.outcomes] == [("fallback", ["p/tiny.png"])]
