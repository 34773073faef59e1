"""dlib's model files (landmark predictors, CNN face detector, ResNet), located and verified.

Each file is a catalogue entry with its SHA-256 (`catalogue.MODEL_FILES`, and the ResNet's
`ModelRecord`); `dlib_model_path` hands out a path only after the file passed that check, so a
damaged `.dat` file ends in one ChecksumMismatch sentence that names it and says how to repair
it, instead of a dlib RuntimeError. Digests are remembered per (path, size, mtime, inode, ctime)
in the process and, across processes, in the cache folder (hub.verified_sha256), so asking again
is free while the file is unchanged, and any change to it means hashing it again.

The files ship with the `face-recognition-models` wheel, found through its metadata without
importing it (its `__init__` imports `pkg_resources`, which new setuptools removed);
$FACENET_DLIB_MODELS names another folder to take them from.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..align.specs import AlignSpec


SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
CNN_FACE_DETECTOR = "mmod_human_face_detector.dat"
DLIB_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
# MTCNN's networks, from the `mtcnn` wheel (verified and located the same way as dlib's files).
MTCNN_PNET, MTCNN_RNET, MTCNN_ONET = "pnet.lz4", "rnet.lz4", "onet.lz4"


def dlib_model_path(filename: str) -> Path:
    """The verified local path of one catalogued dlib model file.

    UsageError when it is not installed, ChecksumMismatch when it is damaged.
    """
    from .catalogue import file_entry
    from .hub import weights_path

    return weights_path(file_entry(filename), download=False)


def landmarks_file(points: int) -> str:
    return SHAPE_PREDICTOR_68 if points == 68 else SHAPE_PREDICTOR_5


def align_model_files(spec: "AlignSpec", detector: str | None = None) -> list[str]:
    """The dlib files a FaceAligner(spec, detector) loads: the landmark predictor (also for the
    fallback boxes of a detector that gives landmarks), and the files the detector registered."""
    from ..detect import DEFAULT_DETECTOR, detector_files

    detector = detector or DEFAULT_DETECTOR
    return [landmarks_file(spec.landmarks)] + [f for f in detector_files(detector) if f != landmarks_file(spec.landmarks)]


def verify_align_models(spec: "AlignSpec", detector: str | None = None) -> list[Path]:
    """Check every file a FaceAligner(spec, detector) would load; call it before starting workers,
    so a damaged file is one sentence from the parent rather than a broken process pool."""
    return [dlib_model_path(name) for name in align_model_files(spec, detector)]


__all__ = ["CNN_FACE_DETECTOR", "DLIB_RESNET", "MTCNN_ONET", "MTCNN_PNET", "MTCNN_RNET", "SHAPE_PREDICTOR_5", "SHAPE_PREDICTOR_68", "align_model_files",
           "dlib_model_path", "landmarks_file", "verify_align_models"]
