"""Shared fixtures: the real data in ../shared/data, skipped with a reason when absent."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACENET_DATA", ROOT.parent / "shared" / "data"))
LFW = DATA / "lfw"
LFW_IMAGES = LFW / "deepfunneled"
EXAMPLES = DATA / "examples"

# A run started in the background by a shell without job control (`cmd &` in a script) inherits
# SIGINT ignored, and so would every process the tests start: the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set FACENET_DATA or put shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def lfw_images() -> Path:
    return _need(LFW_IMAGES)


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    return _need(LFW)


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return _need(EXAMPLES)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own tiny filesystem (tmpfs), to fill up: `small_disk(size_kb)` returns it.

    Needs the right to mount (root, as in CI); skipped with that reason elsewhere.
    """
    import subprocess

    mounted: list[Path] = []

    def make(size_kb: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}); "
                        "the full-disk tests need root")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill_disk(folder: Path, leave_bytes: int = 0) -> None:
    """Fill the filesystem holding `folder` until at most `leave_bytes` are free."""
    import os

    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    if free > leave_bytes:
        with open(folder / ".filler", "wb") as fh:
            try:
                fh.write(b"\0" * (free - leave_bytes))
            except OSError:
                pass


@pytest.fixture
def run_cli():
    """Run `facenet ARGS...` in-process as a user would (our exit codes and error lines):
    returns typer's Result with .exit_code, .stdout, .stderr."""
    from typer.testing import CliRunner

    from facenet_cli.cli import app

    runner = CliRunner()

    def run(*args, **kwargs):
        return runner.invoke(app, [str(a) for a in args], **kwargs)

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (FACENET_NO_SKIPS=1, set by .ci/run) a skipped test is a failed one."""
    import os

    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("FACENET_NO_SKIPS") == "1" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may skip: {report.longrepr}"


@pytest.fixture(scope="session")
def face_pipeline():
    """The default model's pipeline (all faces, upsample auto, flip), loaded once for the gallery,
    identify, search and cluster tests."""
    from facenet_cli.pipeline.face_pipeline import FacePipeline, PipelineOptions

    return FacePipeline.build(PipelineOptions(model="dlib-resnet.v1", upsample="auto", faces="all", flip=True))


@pytest.fixture(scope="session")
def engine(face_pipeline):
    """The parts of `face_pipeline`: its aligner and its embedder."""
    return face_pipeline.aligner, face_pipeline.embedder


# Every store in turn: `gallery_location` (a SQLite path, then a PostgreSQL URL), more galleries
# in the same store (`galleries`, `module_galleries`), the parameter (`store_kind`) and its server.
from tests.gallery_stores import (galleries, gallery_location, module_galleries, postgres_url,  # noqa: E402,F401
                                  store_kind)
