"""Face thumbnails for the gallery page: a small JPEG of a face's aligned crop.

The server makes one for each face it enrols (from the camera or an upload) and hands it to the
gallery store, which keeps it (store/thumbs.py for the SQLite file) and removes it with its face.
Faces added by `facenet gallery add` have none; the page shows an initial instead.
"""
from __future__ import annotations

import numpy as np

THUMB_SIDE = 96


def thumbnail_jpeg(crop_rgb: np.ndarray) -> bytes | None:
    """The thumbnail of an aligned face crop (RGB), THUMB_SIDE pixels square; None if it cannot be encoded."""
    import cv2

    small = cv2.resize(crop_rgb, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes() if ok else None
