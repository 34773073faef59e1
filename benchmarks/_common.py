"""Helpers shared by the benchmark scripts (never imported by the library).

Every script has `--quick`: the same code path and the same printed table on a few dozen real
LFW images, in seconds, so that tests/test_benchmarks.py can run it. Quick figures measure
that the pipeline works, not how well it works: they come from too few images to quote.
"""
from __future__ import annotations

import os
import shlex
import shutil
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACENET_DATA", ROOT.parent / "shared" / "data"))
LFW = DATA / "lfw"
LFW_IMAGES = LFW / "deepfunneled"
QUICK_HELP = "a tiny real subset (a few dozen LFW images, seconds): same steps, same table, figures not quotable"


def need_lfw() -> Path:
    if not LFW_IMAGES.exists():
        raise SystemExit(f"LFW not found at {LFW_IMAGES}; set FACENET_DATA to the shared data folder.")
    return LFW_IMAGES


def lfw_sample(count: int) -> list[Path]:
    """`count` LFW images spread evenly over the sorted list (many people, not the first few)."""
    files = sorted(need_lfw().glob("*/*.jpg"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def people_with_images(minimum: int) -> list[tuple[str, list[Path]]]:
    """LFW people with at least `minimum` images, sorted by name, each with their sorted images."""
    people = []
    for folder in sorted(p for p in need_lfw().iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.jpg"))
        if len(images) >= minimum:
            people.append((folder.name, images))
    return people


def spread(items: list, count: int) -> list:
    """`count` items taken evenly over the list (the whole list when it is shorter)."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def make_tree(files: list[Path], dest: Path) -> Path:
    """Hard-link (or copy) files into dest/<person>/<image>."""
    shutil.rmtree(dest, ignore_errors=True)
    for f in files:
        link(f, dest / f.parent.name / f.name)
    return dest


def link(src: Path, dest: Path) -> None:
    """Hard-link src to dest (a copy across filesystems); an existing dest is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy(src, dest)


def pairs_subset(source: Path, dest: Path, per_fold: int) -> Path:
    """Write an LFW pairs file holding the first `per_fold` matched and mismatched pairs of every
    fold of `source` (pairs.txt: 10 folds; pairsDev*.txt: one), in the same format, so that
    `facenet lfw-roc` and the library read it as they read LFW's own files."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    header = lines[0].split()
    folds, size = (int(header[0]), int(header[1])) if len(header) == 2 else (1, int(header[0]))
    per_fold = min(per_fold, size)
    body = []
    for fold in range(folds):
        start = 1 + fold * 2 * size
        body += lines[start:start + per_fold]                  # matched pairs come first in a fold
        body += lines[start + size:start + size + per_fold]    # then the mismatched ones
    head = f"{folds}\t{per_fold}" if len(header) == 2 else str(per_fold)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join([head, *body]) + "\n", encoding="utf-8")
    return dest


def pair_image_files(pairs_file: Path) -> list[Path]:
    """The LFW image files a pairs file names, sorted, each once (keys `Name/Name_0001`)."""
    from facenet_cli.evaluate.lfw import read_pairs

    first, second = read_pairs(pairs_file).keys()
    return [LFW_IMAGES / f"{key}.jpg" for key in sorted({*first, *second})]


def shell_line(args) -> str:
    """A command as one copyable shell line."""
    return " ".join(shlex.quote(str(a)) for a in args)


def run_facenet_here(args: list) -> None:
    """Run one `facenet` command in this process, through the real command-line parser, and echo
    it. Saves the interpreter and torch start-up of a subprocess per step; a non-zero exit ends
    the benchmark with the command's own error line already printed."""
    from facenet_cli.cli import app

    print("$ facenet " + shell_line(args), flush=True)
    try:
        code = app([str(a) for a in args], prog_name="facenet", standalone_mode=False)
    except SystemExit as exc:  # the parser's own errors exit from inside
        code = exc.code
    if code not in (0, None):
        raise SystemExit(f"`facenet {shell_line(args)}` failed with exit code {code}.")


def median(values) -> float:
    return statistics.median(values)
