"""The one place images are read: EXIF orientation applied, every mode turned into RGB uint8.

Unreadable, truncated, empty or non-image files raise `BadImage` naming the file, so a batch
job can record the outcome and go on.
"""
from __future__ import annotations

import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImage

# Refuse absurd images instead of letting a decompression bomb eat the memory of a batch job
# (200 Mpx is 600 MB as RGB; detection then works on a downscaled copy, see detect.py).
Image.MAX_IMAGE_PIXELS = 200_000_000

# Integer samples are scaled from the smallest of these bit depths that holds the brightest
# value: 8-bit data stored in a 32-bit TIFF stays as it is, 12-bit camera data in a 16-bit
# container is not left nearly black.
_BIT_DEPTHS = (8, 12, 16, 24, 32)
_ORIENTATION = 0x0112  # the EXIF tag; 1 (or absent) is upright


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, upright per its EXIF orientation."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise BadImage(path, f"cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or device would block or never end; only regular files are images.
        raise BadImage(path, "is not a regular file")
    if info.st_size == 0:
        raise BadImage(path, "is empty (0 bytes)")
    return decode_rgb(path, path)


def big_jpeg(path: str | Path, pixels: int) -> bool:
    """Whether read_preview(path, pixels) has a shortcut to offer (reads only the header)."""
    try:
        with Image.open(path) as image:
            return image.format == "JPEG" and image.mode in ("RGB", "L") and image.width * image.height >= 4 * pixels
    except Exception:  # noqa: BLE001 (read_rgb reports the file's problem)
        return False


def read_preview(path: str | Path, pixels: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A reduced decode of a big JPEG for a detection pass: (RGB uint8 image of at least `pixels`
    pixels, at most about 4x that, upright per EXIF; (height, width) of the upright full image),
    or None where there is no such shortcut (not a JPEG, not RGB or grayscale, small, or any
    problem: read_rgb then says what is wrong). libjpeg scales by 1/2, 1/4 or 1/8 while it
    decodes (PIL's draft mode), so this costs a fraction of the full decode: 70 ms against 250 ms
    for a 12 Mpx photo here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if image.format != "JPEG" or image.mode not in ("RGB", "L") or width * height < 4 * pixels:
                    return None
                scale = (pixels / (width * height)) ** 0.5
                image.draft("RGB", (int(width * scale) + 1, int(height * scale) + 1))
                image.load()
                orientation = image.getexif().get(_ORIENTATION, 1)
                if orientation != 1:
                    image = ImageOps.exif_transpose(image)
                full = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
                return to_rgb_uint8(image), full
    except Exception:  # noqa: BLE001 (read_rgb reports the file's problem with its own sentence)
        return None


class TooManyPixels(BadImage):
    """An image over the caller's pixel limit (decode_rgb's `max_pixels`), refused before decoding."""


def decode_rgb(source, label, max_pixels: int | None = None) -> np.ndarray:
    """Decode `source` (a path or a binary file object, e.g. BytesIO of an upload) as RGB uint8,
    upright per EXIF; every failure is a BadImage naming `label`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if max_pixels is not None and image.width * image.height > max_pixels:
                    raise TooManyPixels(label, f"is {image.width}x{image.height} pixels, over the limit of "
                                               f"{max_pixels:,}; send a smaller image")
                image.load()  # decode now: truncation shows up here, not later
                # exif_transpose copies the image even when it is upright (36 MB for 12 Mpx).
                if image.getexif().get(_ORIENTATION, 1) != 1:
                    image = ImageOps.exif_transpose(image)
                return to_rgb_uint8(image)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(label, "is not an image in a format we can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Too many pixels as well (PIL refuses before our max_pixels check): a BadImage like any
        # other to batch jobs, 413 to the server.
        raise TooManyPixels(label, f"is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except UnsupportedMode as exc:
        raise BadImage(label, str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(label, f"is corrupt or truncated ({exc})") from None


class UnsupportedMode(ValueError):
    pass


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to contiguous RGB uint8, scaling high-depth samples by their real range."""
    mode = image.mode
    if mode in ("F", "I") or mode.startswith("I;16"):
        gray = gray_to_uint8(np.asarray(image))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as an image viewer shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError:
            raise UnsupportedMode(f"has an image mode ({mode}) that cannot be converted to RGB") from None
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def gray_to_uint8(values: np.ndarray) -> np.ndarray:
    """One channel of any depth to uint8 by the data's real range.

    Floats in [0, 1] are scaled by 255, floats in [0, 255] kept; integers are scaled from the
    smallest bit depth (8, 12, 16, 24, 32) that holds their maximum; anything else (negative
    values, floats beyond 255) is stretched from its minimum to its maximum."""
    if values.size == 0:
        return np.zeros(values.shape, np.uint8)
    data = values.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, 0.0).astype(np.float32)
    low, high = float(data.min()), float(data.max())
    if np.issubdtype(values.dtype, np.floating):
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        elif low >= 0.0 and high <= 255.0:
            low, high = 0.0, 255.0
    elif low >= 0:
        low = 0.0
        high = next((2.0 ** bits - 1 for bits in _BIT_DEPTHS if high <= 2.0 ** bits - 1), high)
    if high <= low:
        return np.full(values.shape, int(np.clip(round(low), 0, 255)), np.uint8)
    scaled = (data - low) * np.float32(255.0 / (high - low)) + np.float32(0.5)
    return np.clip(scaled, 0, 255).astype(np.uint8)
