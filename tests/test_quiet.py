"""Progress is drawn only on a terminal, and never with --quiet (issue 19, item 6): a log file or
a pipe gets no bar, not even its last line; a terminal gets one unless --quiet is given."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import copy_people

ROOT = Path(__file__).resolve().parents[1]
BAR = "━"  # rich's bar character
PHOTO_PEOPLE = {"Tony_Blair": 1, "Colin_Powell": 1}


@pytest.fixture
def raw(lfw_images, tmp_path):
    return copy_people(lfw_images, tmp_path / "raw", PHOTO_PEOPLE)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": "100", **extra}


def _align(raw: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "facenet_cli", "align", str(raw), str(out), *extra]


def test_a_pipe_gets_no_bar_even_with_force_color(raw, tmp_path):
    # FORCE_COLOR (set in many CI jobs) makes rich take a pipe for a terminal; progress ignores it.
    done = subprocess.run(_align(raw, tmp_path / "out", "--json"), capture_output=True, text=True, cwd=ROOT,
                          env=_env(FORCE_COLOR="1"), timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"] == 2
    assert BAR not in done.stderr and "Aligning" not in done.stderr and done.stderr.strip() == ""


def _on_a_terminal(command: list[str], timeout: float = 300) -> tuple[int, str, str]:
    """Run `command` with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=_env())
    os.close(slave)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            got += chunk
        elif proc.poll() is not None:
            break
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, stdout, got.decode(errors="replace")


def test_a_terminal_gets_a_bar_unless_quiet(raw, tmp_path):
    code, stdout, terminal = _on_a_terminal(_align(raw, tmp_path / "shown", "--json"))
    assert code == 0, terminal
    assert json.loads(stdout)["total"] == 2
    assert "Aligning" in terminal and BAR in terminal and "2/2" in terminal

    code, stdout, terminal = _on_a_terminal(_align(raw, tmp_path / "quiet", "--json", "--quiet"))
    assert code == 0, terminal
    assert json.loads(stdout)["total"] == 2  # the same result
    assert BAR not in terminal and "Aligning" not in terminal and terminal.strip() == ""


def test_every_command_that_draws_progress_takes_quiet(run_cli):
    for command in (["align"], ["represent"], ["cluster"], ["identify"], ["gallery", "add"], ["train"],
                    ["fetch-models"], ["demo"]):
        shown = run_cli(*command, "--help", env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "--quiet" in shown.stdout, command
