"""Locate the dlib model files shipped by the `face-recognition-models` wheel.

The package's own `__init__` imports `pkg_resources`, which new setuptools removed, so we
find its files through the installed distribution's metadata and never import it.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from functools import lru_cache
from pathlib import Path

from .errors import UsageError

DISTRIBUTION = "face-recognition-models"

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
CNN_FACE_DETECTOR = "mmod_human_face_detector.dat"
DLIB_RESNET = "dlib_face_recognition_resnet_model_v1.dat"


@lru_cache(maxsize=None)
def models_dir() -> Path:
    """The folder holding the `.dat` files of `face-recognition-models`."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
        for f in dist.files or []:
            if str(f).endswith(SHAPE_PREDICTOR_68):
                return Path(dist.locate_file(f)).parent
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec locates the package without executing its __init__.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "models"
        if (candidate / SHAPE_PREDICTOR_68).exists():
            return candidate
    raise UsageError(
        "The dlib model files were not found; install them with `pip install face-recognition-models`."
    )


def dlib_model_path(filename: str) -> Path:
    """Full path of one shipped dlib model file."""
    path = models_dir() / filename
    if not path.exists():
        raise UsageError(f"{filename} is missing from {models_dir()}; reinstall face-recognition-models.")
    return path
