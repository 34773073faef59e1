"""Reading images of every mode and depth: a real LFW face saved each way must come back with
its pixels scaled right and its face found."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from facenet_cli.align.aligner import FaceAligner
from facenet_cli.align.specs import get_spec
from facenet_cli.errors import BadImage
from facenet_cli.images import gray_to_uint8, read_rgb

FACE = "George_W_Bush/George_W_Bush_0001.jpg"


@pytest.fixture(scope="module")
def face(lfw_images) -> Image.Image:
    with Image.open(lfw_images / FACE) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    # upsample 0: the face is found at the image's own scale, so bad scaling is not hidden by upsampling.
    return FaceAligner(get_spec("dlib-chip"), upsample=0)


def _gray(face: Image.Image) -> np.ndarray:
    return np.asarray(face.convert("L"))


def _exif_rotated(face: Image.Image, path):
    # Stored sideways, EXIF says "rotate 90 CW to view": upright only if EXIF is applied.
    exif = Image.Exif()
    exif[0x0112] = 6
    face.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)


WRITERS = {
    "float32-0-1.tif": lambda f, p: Image.fromarray(_gray(f).astype(np.float32) / 255.0, "F").save(p),
    "int32-24bit.tif": lambda f, p: Image.fromarray(_gray(f).astype(np.int32) * 65536, "I").save(p),
    "sixteen.png": lambda f, p: Image.fromarray(_gray(f).astype(np.uint16) * 257).save(p),
    "cmyk.jpg": lambda f, p: f.convert("CMYK").save(p, quality=95),
    "rgba.png": lambda f, p: f.convert("RGBA").save(p),
    "palette.gif": lambda f, p: f.convert("P").save(p),
    "gray.png": lambda f, p: f.convert("L").save(p),
    "exif-rotated.jpg": _exif_rotated,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_mode_finds_the_face(face, aligner, tmp_path, name):
    path = tmp_path / name
    WRITERS[name](face, path)
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (250, 250, 3)
    # Brightness survives the conversion (a wrong scale makes the image black or white).
    assert abs(float(rgb.mean()) - float(_gray(face).mean())) < 12, rgb.mean()
    found = aligner.align(rgb)
    reference = aligner.align(np.asarray(face))
    assert len(found) == 1 and not found[0].fallback
    # The same face, where the original has it.
    assert np.abs(found[0].landmarks - reference[0].landmarks).max() < 6


@pytest.mark.parametrize("name", ["float32-0-1.tif", "int32-24bit.tif", "sixteen.png"])
def test_high_depth_gray_is_scaled_by_its_real_range(face, tmp_path, name):
    path = tmp_path / name
    WRITERS[name](face, path)
    rgb = read_rgb(path)
    assert np.abs(rgb[:, :, 0].astype(int) - _gray(face).astype(int)).max() <= 1
    assert (rgb[:, :, 0] == rgb[:, :, 2]).all()


def test_gray_scaling_rules():
    # floats in [0, 255] are kept, integers from 12-bit data are scaled by 4095, negatives stretched
    assert gray_to_uint8(np.array([[0.0, 128.0, 255.0]], np.float32)).tolist() == [[0, 128, 255]]
    assert gray_to_uint8(np.array([[0, 4095]], np.int32)).tolist() == [[0, 255]]
    assert gray_to_uint8(np.array([[0, 255]], np.int32)).tolist() == [[0, 255]]
    assert gray_to_uint8(np.array([[-1.0, 0.0, 1.0]], np.float32)).tolist() == [[0, 128, 255]]
    assert gray_to_uint8(np.array([[np.nan, 1.0]], np.float32)).tolist() == [[0, 255]]


def test_tiny_image_reads(tmp_path):
    Image.new("RGB", (8, 8), (200, 120, 90)).save(tmp_path / "tiny.png")
    assert read_rgb(tmp_path / "tiny.png").shape == (8, 8, 3)


def test_a_pipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(BadImage, match="not a regular file"):
        read_rgb(fifo)

