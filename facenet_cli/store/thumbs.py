"""Face thumbnails of the SQLite store, the one home of the `<gallery>.thumbs/` folder.

The gallery file keeps embeddings, not pictures, so a face enrolled with a thumbnail (`facenet
serve` enrols from the camera or an upload with a small JPEG of its aligned crop) keeps it in a
file beside the gallery, named by the face's image SHA-256 (the gallery's own unique key: never a
name a request could turn into a path). Callers go through the store (`save_thumbnail`,
`thumbnail`, `thumbnails`); removing a face removes its thumbnail.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..atomic import write_bytes_atomic

_SHA = re.compile(r"^[0-9a-f]{64}$")


def thumbs_dir(gallery_path: Path) -> Path:
    return gallery_path.with_name(gallery_path.name + ".thumbs")


def thumb_path(gallery_path: Path, image_sha256: str) -> Path | None:
    """The thumbnail file of a face, or None when the key is not a plain SHA-256 hex digest."""
    if not isinstance(image_sha256, str) or not _SHA.match(image_sha256):
        return None
    return thumbs_dir(gallery_path) / f"{image_sha256}.jpg"


def save_thumb(gallery_path: Path, image_sha256: str, jpeg: bytes) -> None:
    path = thumb_path(gallery_path, image_sha256)
    if path is not None:
        write_bytes_atomic(path, jpeg)


def read_thumb(gallery_path: Path, image_sha256: str) -> bytes | None:
    path = thumb_path(gallery_path, image_sha256)
    if path is None or not path.is_file():
        return None
    try:
        return path.read_bytes()
    except OSError:
        return None


def thumb_keys(gallery_path: Path) -> set[str]:
    """The image SHA-256 of every face that has a thumbnail file."""
    folder = thumbs_dir(gallery_path)
    if not folder.is_dir():
        return set()
    return {path.stem for path in folder.glob("*.jpg") if _SHA.match(path.stem)}


def remove_thumbs(gallery_path: Path, image_sha256s) -> None:
    """Remove these faces' thumbnails (a failure leaves an orphan file, never a wrong picture:
    no other face has the same image)."""
    for sha in image_sha256s:
        path = thumb_path(gallery_path, sha)
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
