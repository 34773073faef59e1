"""The one place images are read: EXIF orientation applied, every mode turned into RGB uint8.

Unreadable, truncated, empty or non-image files raise `BadImage` naming the file, so a batch
job can record the outcome and go on.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImage

# Refuse absurd images instead of letting a decompression bomb eat the memory of a batch job.
Image.MAX_IMAGE_PIXELS = 200_000_000

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, upright per its EXIF orientation."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImage(path, f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise BadImage(path, "is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode now: truncation shows up here, not later
                image = ImageOps.exif_transpose(image)
                return to_rgb_uint8(image)
    except UnidentifiedImageError:
        raise BadImage(path, "is not an image in a format we can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(path, "is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(path, f"is corrupt or truncated ({exc})") from None


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to contiguous RGB uint8."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and 32-bit grayscale: scale the value range down to 8 bits instead of clipping.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as an image viewer shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def looks_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
