"""Face thumbnails for the gallery page, the one home of the `<gallery>.thumbs/` folder.

The gallery file keeps embeddings, not pictures, so the faces enrolled through `facenet serve`
(from the camera or an upload) keep a small JPEG of their aligned crop beside it, named by the
face's image SHA-256 (the gallery's own unique key: never a name a request could turn into a
path). Faces added by `facenet gallery add` have none; the page shows an initial instead.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic

THUMB_SIDE = 96
_SHA = re.compile(r"^[0-9a-f]{64}$")


def thumbs_dir(gallery_path: Path) -> Path:
    return gallery_path.with_name(gallery_path.name + ".thumbs")


def thumb_path(gallery_path: Path, image_sha256: str) -> Path | None:
    """The thumbnail file of a face, or None when the key is not a plain SHA-256 hex digest."""
    if not _SHA.match(image_sha256 or ""):
        return None
    return thumbs_dir(gallery_path) / f"{image_sha256}.jpg"


def save_thumb(gallery_path: Path, image_sha256: str, crop_rgb: np.ndarray) -> None:
    import cv2

    path = thumb_path(gallery_path, image_sha256)
    if path is None:
        return
    small = cv2.resize(crop_rgb, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if ok:
        write_bytes_atomic(path, data.tobytes())


def prune_thumbs(gallery_path: Path, keep: set[str]) -> int:
    """Remove the thumbnails of faces no longer in the gallery; how many went."""
    folder = thumbs_dir(gallery_path)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob("*.jpg"):
        if path.stem not in keep:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
