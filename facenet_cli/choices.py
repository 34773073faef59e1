"""Every fixed set of choices the engine and the CLI share, as enums, in a module that imports
nothing heavy (the CLI builds `--help` from it without loading numpy, dlib, OpenCV or torch).

The library takes the plain string values (`Detector.hog.value == "hog"`); the CLI's options are
typed with these enums, so `--help` lists the choices, shells complete them and a wrong value
fails before any model loads. `tests/test_cli_grammar.py` checks that each enum equals the
engine's own list.
"""
from __future__ import annotations

from enum import Enum

from .detect import DEFAULT_DETECTOR  # noqa: E402,F401 (light: the registry without its detector files)

DEFAULT_MODEL = "dlib-resnet.v1"

# The side of an aligned crop, in pixels: the parser and the library check the same bounds.
MIN_SIZE, MAX_SIZE = 16, 2048


class Choice(str, Enum):
    def __str__(self) -> str:  # "hog", not "Detector.hog", in messages and f-strings
        return self.value


def _detector_choice() -> type[Choice]:
    """`--detector`: the built-in detectors of the registry (facenet_cli/detect/, one file each,
    light to import), so that a new detector file is a new choice. Members are named by value
    with "+" and "-" as "_" (`Detector.hog_cnn`); detectors registered at run time are for the
    Python API."""
    from .detect import detector_names

    members = [(name.replace("+", "_").replace("-", "_"), name) for name in detector_names(builtin_only=True)]
    return Choice("Detector", members, module=__name__, qualname="Detector")


Detector = _detector_choice()
DefaultDetector = Detector(DEFAULT_DETECTOR)  # the CLI options' default


class Upsample(Choice):
    auto = "auto"
    u0 = "0"
    u1 = "1"
    u2 = "2"
    u3 = "3"
    u4 = "4"


class FacePolicy(Choice):
    largest = "largest"
    center = "center"
    center_only = "center-only"
    all = "all"
    skip_multi = "skip-multi"


class GalleryFacePolicy(Choice):
    """`gallery add --faces`: one face per photo is enrolled, so no `all`."""

    skip_multi = "skip-multi"
    largest = "largest"
    center = "center"
    center_only = "center-only"


class Fallback(Choice):
    none = "none"
    center = "center"
    whole = "whole"


class Landmarks(Choice):
    outer_eyes_and_nose = "outerEyesAndNose"
    inner_eyes_and_bottom_lip = "innerEyesAndBottomLip"
    dlib_chip = "dlib-chip"
    dlib_chip68 = "dlib-chip68"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Architecture(Choice):
    nn4 = "nn4"
    nn4_small1 = "nn4.small1"
    nn4_small2 = "nn4.small2"
    nn2 = "nn2"


class Miner(Choice):
    openface = "openface"
    semihard = "semihard"
    batch_hard = "batch-hard"


class Optimizer(Choice):
    adam = "adam"
    sgd = "sgd"


def values(enum: type[Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


class LinkMode(Choice):
    """`facenet cluster --link`: how each cluster's folder points at the face crops."""
    symlink = "symlink"
    hardlink = "hardlink"


class IdentifyMethod(Choice):
    """`facenet identify --method`: how a face is matched to a person (each behind the unknown gate)."""
    mean = "mean"
    nearest = "nearest"
    knn = "knn"
    svm = "svm"


class Precision(Choice):
    """`--precision`: the network's arithmetic (embedder.PRECISIONS; auto: nets/precision.py)."""
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


def _executor_choice() -> type[Choice]:
    """`--executor`: where the batch work runs, one choice per file of facenet_cli/executors/
    (local: this machine's processes; ray: the tasks and actors of a Ray cluster)."""
    from .executors import BUILTIN_EXECUTORS

    return Choice("Executor", [(name, name) for name in BUILTIN_EXECUTORS], module=__name__, qualname="Executor")


Executor = _executor_choice()


class IndexUse(Choice):
    """`--index` of identify and search: the gallery's search index (face_index.py) or an exact scan."""
    auto = "auto"
    always = "always"
    never = "never"
