"""`--detector hog-onet`, the default: the box from dlib's HOG detector, its frontal filter first on the
grayscale photo (all five filters on the colour photo, as `hog`, only where that finds no face
the policy accepts), and the five landmarks from MTCNN's O-net (in numpy,
facenet_cli/nets/mtcnn_numpy.py; in the PyTorch port where torch is loaded already) run once on
each chosen box, mapped to dlib's five points as `--detector mtcnn` maps its own (detect/mtcnn.py).

Why: the frontal filter alone on one channel costs about 55 % of the five filters on three, but
its boxes differ from the full detector's on a third of LFW's photos, and dlib's 5-point
predictor follows the box, which cost LFW accuracy (hog-fast). O-net looks at the face itself:
one 48x48 forward pass (about 0.8 ms on one core, the predictor about 0.6 ms) that regresses
the points wherever the box sits. docs/SPEED.md and docs/ACCURACY.md have the figures.

O-net is given the square crop MTCNN's own cascade would give it: HOG's box moved and widened
by the median relation between HOG's frontal box and MTCNN's final square box on 300 LFW photos
(`HOG_TO_ONET`: centre shifted by (-0.043, -0.123) of the box's width, side 1.245x). A box
O-net does not score as a face (below MTCNN's own last threshold) keeps no points, and the
aligner runs dlib's predictor on it instead.
"""
from __future__ import annotations

import sys
from functools import lru_cache

from . import MTCNN_5, FaceBox, register_detector
from .hog_fast import HogFastStage
from ..models.resources import MTCNN_ONET, dlib_model_path

# HOG box (left, top, right, bottom; width w, centre c) -> O-net's square crop: centre
# c + (dx, dy) * w, side `side` * w. Measured (see the module doc).
HOG_TO_ONET = (-0.0434, -0.1228, 1.2449)


class HogOnetStage(HogFastStage):
    landmarks = MTCNN_5
    points_on_demand = True  # O-net runs on the faces the policy keeps, not on every box found

    def __init__(self):
        super().__init__()
        self._onet = _numpy_onet()
        # Where torch is imported already (the commands that embed), O-net runs in the PyTorch
        # port instead: all of a photo's faces in one batch, 9.8 against 19 ms for the 20 faces
        # of a group photo here, 0.8 against 1.0 ms for one face. No command imports torch for it.
        self._torch_onet = None

    # The frontal filter on the grayscale image: its gradients then come from one channel
    # instead of the strongest of three (about 15 % less detection time). The boxes move a
    # little on some photos, which dlib's predictor would follow; O-net places the points from
    # the pixels. Where it finds no face, all five filters search the colour image, as `hog`
    # does (on grey alone LFW lost 11 of 13,233 faces).
    def find_narrow(self, rgb, level: int) -> list[FaceBox]:
        return super().find_narrow(_gray(rgb), level)

    def points_for(self, rgb, boxes: list[FaceBox]) -> list[FaceBox]:
        import numpy as np

        from ..nets.mtcnn_numpy import THRESHOLDS

        dx, dy, side = HOG_TO_ONET
        squares = []
        for box in boxes:
            width = box.right - box.left
            cx, cy = (box.left + box.right) / 2 + dx * width, (box.top + box.bottom) / 2 + dy * width
            half = side * width / 2
            squares.append((cx - half, cy - half, cx + half, cy + half))
        if self._torch_onet is None and "torch" in sys.modules:
            self._torch_onet = _torch_onet()
        points, scores = self._onet.points_on(rgb, np.asarray(squares, dtype=np.float64), self._torch_onet)
        threshold = THRESHOLDS[2]  # below MTCNN's own last threshold a box keeps no points
        return [FaceBox(b.left, b.top, b.right, b.bottom, b.score,
                        p.astype("float32") if s > threshold else None)
                for b, p, s in zip(boxes, points, scores)]


@lru_cache(maxsize=None)
def _load(path: str, mtime_ns: int):
    from ..nets.mtcnn_numpy import NumpyOnet, read_weights

    return NumpyOnet(read_weights(path))


def _numpy_onet():
    """O-net in numpy (nets/mtcnn_numpy.py: no torch to import), once per process; its file is
    verified by SHA-256 before it is read (a pickle)."""
    path = dlib_model_path(MTCNN_ONET)
    return _load(str(path), path.stat().st_mtime_ns)


def _torch_onet():
    """O-net's `landmarks(crops)` in the PyTorch port (nets/mtcnn.py), once per process."""
    path = dlib_model_path(MTCNN_ONET)
    return _load_torch(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=None)
def _load_torch(path: str, mtime_ns: int):
    import torch

    from .mtcnn import _one_thread, _worker_threads
    from ..nets.mtcnn import ONet, normalize
    from ..nets.mtcnn_numpy import read_weights

    network = ONet(read_weights(path)).eval()

    def landmarks(crops):
        # One torch thread, as the cascade (detect/mtcnn.py): in a forked worker OpenMP's pool
        # of the parent would hang the first convolution.
        _worker_threads()
        with _one_thread(), torch.inference_mode():
            _, points, face = network(normalize(crops))
        return points.numpy(), face.numpy()

    return landmarks


def _gray(rgb):
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb


register_detector("hog-onet", HogOnetStage, files=(MTCNN_ONET,),
                  help="hog-fast's boxes, O-net's landmarks: faster than hog")
