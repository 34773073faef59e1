"""Small builders shared by tests (real images copied from ../shared/data into tmp folders)."""
from __future__ import annotations

import shutil
from pathlib import Path


def copy_people(lfw_images: Path, dest: Path, people: dict[str, int]) -> Path:
    """Copy the first N images of each named LFW person into dest/<person>/."""
    for person, count in people.items():
        (dest / person).mkdir(parents=True, exist_ok=True)
        for src in sorted((lfw_images / person).iterdir())[:count]:
            shutil.copy(src, dest / person / src.name)
    return dest


def copy_photos(photos, dest: Path) -> Path:
    """Copy LFW photo files into dest/<person>/<file>, as a RAW tree for `facenet align`."""
    for path in photos:
        (dest / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.parent.name / path.name)
    return dest


def known_and_queries(lfw_images: Path, root: Path, people) -> tuple[Path, Path]:
    """root/known/<person>/ with each person's first three LFW photos, root/queries/ with their fourth."""
    copy_people(lfw_images, root / "all", {p: 4 for p in people})
    known, queries = root / "known", root / "queries"
    queries.mkdir(exist_ok=True)
    for person in people:
        files = sorted((root / "all" / person).iterdir())
        (known / person).mkdir(parents=True)
        for f in files[:3]:
            shutil.copy(f, known / person / f.name)
        shutil.copy(files[3], queries / files[3].name)
    return known, queries


def png_decodes_fully(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


def error_line(stderr: str) -> str:
    """A failed command's stderr is exactly one `Error: ...` line, no traceback; that line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def unit_vectors(n: int, seed: int, dim: int = 128):
    """n random unit rows: stand-ins for embeddings where a store test is not about the network."""
    import numpy as np

    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def dlib_record():
    """The default model's catalogue record (what a gallery binds to)."""
    from facenet_cli.models.catalogue import CATALOGUE

    return CATALOGUE["dlib-resnet.v1"]
