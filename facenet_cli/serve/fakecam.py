"""A fake camera for testing the page in a real browser: frames made from photos, written as the
YUV4MPEG2 file that Chromium plays (and loops) with `--use-file-for-fake-video-capture=FILE.y4m`.

Also used by benchmarks/serve_load.py to make 640x480 frames with faces.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

FRAME_WIDTH, FRAME_HEIGHT = 640, 480


def compose_frame(photos: Sequence[np.ndarray], side: int, *, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT,
                  shift: tuple[int, int] = (0, 0), background: int = 60) -> np.ndarray:
    """An RGB frame with each photo scaled to `side` x `side`, side by side and centred
    (`shift` moves them by a few pixels, so consecutive frames differ as a camera's do)."""
    import cv2

    frame = np.full((height, width, 3), background, dtype=np.uint8)
    count = len(photos)
    gap = (width - count * side) // (count + 1)
    if gap < 0 or side > height:
        raise ValueError(f"{count} photos of {side} px do not fit a {width}x{height} frame")
    top = (height - side) // 2 + shift[1]
    for i, photo in enumerate(photos):
        left = gap + i * (side + gap) + shift[0]
        tile = cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + side, height), min(left + side, width)
        frame[y0:y1, x0:x1] = tile[y0 - top:y1 - top, x0 - left:x1 - left]
    return frame


def compose_scene(tiles: Sequence[tuple[np.ndarray, int, int, int]], *, width: int = FRAME_WIDTH,
                  height: int = FRAME_HEIGHT, background: int = 60) -> np.ndarray:
    """An RGB frame with photos of different sizes where they are put: each tile is
    (photo, side, left, top), the photo scaled to `side` x `side` (people near and far)."""
    import cv2

    frame = np.full((height, width, 3), background, dtype=np.uint8)
    for photo, side, left, top in tiles:
        if left < 0 or top < 0 or left + side > width or top + side > height:
            raise ValueError(f"a {side} px photo at ({left}, {top}) does not fit a {width}x{height} frame")
        frame[top:top + side, left:left + side] = cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC)
    return frame


def write_y4m(path: str | os.PathLike, frames_rgb: Iterable[np.ndarray], fps: int = 10) -> int:
    """Write RGB frames (all the same size, even sides) as YUV4MPEG2 4:2:0; the number written."""
    import cv2

    count = 0
    with open(path, "wb") as fh:
        for frame in frames_rgb:
            height, width = frame.shape[:2]
            if count == 0:
                fh.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
            fh.write(b"FRAME\n")
            fh.write(cv2.cvtColor(np.ascontiguousarray(frame[:, :, ::-1]), cv2.COLOR_BGR2YUV_I420).tobytes())
            count += 1
    return count


def jpeg(frame_rgb: np.ndarray, quality: int = 80) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the frame as JPEG")
    return data.tobytes()
