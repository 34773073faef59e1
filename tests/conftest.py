"""Shared fixtures: the real data in ../shared/data, skipped with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACENET_DATA", ROOT.parent / "shared" / "data"))
LFW = DATA / "lfw"
LFW_IMAGES = LFW / "deepfunneled"
EXAMPLES = DATA / "examples"


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
