"""Helpers shared by the benchmark scripts (never imported by the library)."""
from __future__ import annotations

import os
import shutil
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACENET_DATA", ROOT.parent / "shared" / "data"))
LFW_IMAGES = DATA / "lfw" / "deepfunneled"


def need_lfw() -> Path:
    if not LFW_IMAGES.exists():
        raise SystemExit(f"LFW not found at {LFW_IMAGES}; set FACENET_DATA to the shared data folder.")
    return LFW_IMAGES


def lfw_sample(count: int) -> list[Path]:
    """`count` LFW images spread evenly over the sorted list (many people, not the first few)."""
    files = sorted(need_lfw().glob("*/*.jpg"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def make_tree(files: list[Path], dest: Path) -> Path:
    """Hard-link (or copy) files into dest/<person>/<image>."""
    shutil.rmtree(dest, ignore_errors=True)
    for f in files:
        target = dest / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy(f, target)
    return dest


def median(values) -> float:
    return statistics.median(values)
