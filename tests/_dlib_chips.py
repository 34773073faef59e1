"""Face chips made with dlib itself (detector, 5-point landmarks, get_face_chip), so tests of our
network compare against dlib on exactly the pixels dlib would see."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image


@lru_cache(maxsize=None)
def _dlib_tools():
    import dlib

    from facenet_cli.models import resources

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(resources.dlib_model_path(resources.SHAPE_PREDICTOR_5)))
    return detector, predictor


def grace_hopper_path() -> Path:
    """The portrait that ships with matplotlib (a required dependency), so a test using it never skips."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def photo_chips(photos: list[Path], size: int = 150, padding: float = 0.25) -> list[np.ndarray]:
    """dlib's chip of the largest face of each photo (every photo must hold one)."""
    import dlib

    detector, predictor = _dlib_tools()
    chips = []
    for photo in photos:
        image = np.asarray(Image.open(photo).convert("RGB"))
        faces = detector(image, 1)
        assert faces, f"dlib finds no face in {photo}"
        face = max(faces, key=lambda r: r.area())
        chips.append(dlib.get_face_chip(image, predictor(image, face), size=size, padding=padding))
    return chips


def lfw_chips(lfw_images: Path, count: int, size: int = 150, padding: float = 0.25) -> list[np.ndarray]:
    """The first `count` LFW photos (people in name order, first photo each) in which dlib's
    detector finds a face, as size x size RGB uint8 chips of the largest face."""
    import dlib

    detector, predictor = _dlib_tools()
    chips = []
    for person in sorted(p for p in lfw_images.iterdir() if p.is_dir()):
        photo = sorted(person.glob("*.jpg"))[0]
        image = np.asarray(Image.open(photo).convert("RGB"))
        faces = detector(image, 1)
        if not faces:
            continue
        face = max(faces, key=lambda r: r.area())
        chips.append(dlib.get_face_chip(image, predictor(image, face), size=size, padding=padding))
        if len(chips) == count:
            break
    return chips
