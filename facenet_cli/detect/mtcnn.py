"""MTCNN (`--detector mtcnn`): a cascade of three small CNNs (facenet_cli/nets/mtcnn.py) that
returns boxes, scores and five landmarks (eye centres, nose tip, mouth corners), run by PyTorch
on the CPU. Looks for faces down to `min_face` pixels wide (default 20; HOG finds faces from about
70 px without upsampling). Its weights come with the `mtcnn` wheel (the catalogue's
`mtcnn-pnet`, `mtcnn-rnet`, `mtcnn-onet` files, each verified by SHA-256 before it is read).

Alignment (dlib-chip): dlib's five points predicted from MTCNN's by a similarity transform fitted on
LFW, measured better than dlib's predictor on MTCNN's box (figures below). Landmarks of FaceBoxes
stay MTCNN's own (scheme MTCNN_5); `to_dlib_5` maps them.

Upsampling: level k looks for faces 20 / 2**k px wide (P-net's pyramid starts 2**k times larger;
with an explicit `min_face`, level 0 alone, from min_face up), within the stage's budgets (UPSAMPLE_BUDGET["mtcnn"]: LFW's 250x250 photos get levels 0
and 1 under "auto"); photos above PIXEL_BUDGET["mtcnn"] are searched on a downscaled copy.
"""
from __future__ import annotations

import multiprocessing
import os
from contextlib import contextmanager
from functools import lru_cache

from ..models.resources import MTCNN_ONET, MTCNN_PNET, MTCNN_RNET, dlib_model_path
from . import (MTCNN_5, PIXEL_BUDGET, UPSAMPLE_BUDGET, DetectorStage, FaceBox, register_detector,
               register_landmark_scheme)

# What `min_face` is when nobody sets it: the reference MTCNN's, in pixels of the searched image.
DEFAULT_MIN_FACE = 20
# Below this the first pyramid level is more than 2x upsampled (P-net's window is 12 pixels):
# many false boxes for little gain, so upsampling levels stop here.
SMALLEST_MIN_FACE = 6


class MtcnnStage(DetectorStage):
    name = "mtcnn"
    upsample_budget = UPSAMPLE_BUDGET["mtcnn"]
    pixel_budget = PIXEL_BUDGET["mtcnn"]
    landmarks = MTCNN_5
    reach = DEFAULT_MIN_FACE
    searches_from_min_face = True

    def __init__(self):
        self._net = _mtcnn_model()

    def find(self, rgb, level: int) -> list[FaceBox]:
        _worker_threads()
        if self.min_face is not None and level > 0:
            return []  # level 0's pyramid already covers every face from min_face up
        smallest = (self.min_face if self.min_face is not None else DEFAULT_MIN_FACE) / 2 ** level
        with _one_thread():
            boxes, scores, points = self._net.detect(rgb, max(smallest, SMALLEST_MIN_FACE))
        # dlib's rectangles are inclusive pixel ranges, as MTCNN's boxes.
        return [FaceBox(int(round(b[0])), int(round(b[1])), int(round(b[2])), int(round(b[3])), float(s),
                        p.astype("float32"))
                for b, s, p in zip(boxes, scores, points)]


def _worker_threads() -> None:
    """One torch thread in a worker process, as the embedding workers do (pipeline/represent.py):
    the other cores have their own workers, and OpenMP's pool is not usable in a forked child
    of a parent that ran it. Checked once per process (a forked child inherits the parent's mark)."""
    global _threads_checked_in
    if _threads_checked_in == os.getpid():
        return
    _threads_checked_in = os.getpid()
    if multiprocessing.parent_process() is not None:
        import torch

        torch.set_num_threads(1)


_threads_checked_in: int | None = None


@contextmanager
def _one_thread():
    """The cascade in one torch thread, whatever the process uses for the embedding network
    (e.g. `facenet serve`, 2 on 2 cores): its layers are too small to share between threads, and
    when another program keeps the cores busy, threads waiting for each other at every layer made
    a 640x480 frame take 700-1,500 ms instead of 11-40 ms (2 cores, load 4-5; benchmarks/detectors.py)."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _mtcnn_model():
    """The three networks, loaded once per process (each file verified before it is unpickled)."""
    paths = [dlib_model_path(name) for name in (MTCNN_PNET, MTCNN_RNET, MTCNN_ONET)]
    return _load(*(str(p) for p in paths), *(p.stat().st_mtime_ns for p in paths))


@lru_cache(maxsize=None)
def _load(pnet: str, rnet: str, onet: str, *mtimes: int):
    from ..nets.mtcnn import Mtcnn
    from ..nets.mtcnn_numpy import read_weights

    return Mtcnn(read_weights(pnet), read_weights(rnet), read_weights(onet))


# Alignment. MTCNN's points are not the dlib-chip template's (dlib's five: two corners of each eye,
# the base of the nose), and dlib's 5-point predictor on MTCNN's box aligns worse than dlib's
# points predicted from MTCNN's: measured with dlib-resnet.v1 on LFW View 2 folds 1-2 (1,200
# pairs, the same 1,583 photos, no flip; benchmarks/mtcnn_landmarks.py): accuracy 0.9875 (2-fold
# cross-validated threshold; 0.9892 at the model's 0.182) from the mapped points, 0.9825 (0.9842)
# from the predictor on MTCNN's box, 0.9817 (0.9808) from HOG's box and the predictor.
# The mapping: dlib's five points as a mean shape in MTCNN's frame (a face's five MTCNN points
# normalised by a similarity transform to their mean shape), fitted on 398 LFW faces of people
# outside those folds (HOG box + dlib's predictor as the target), carried back to the photo by the
# similarity transform from the mean MTCNN shape to the face's own points.
MTCNN_MEAN_SHAPE = ((-0.34119, -0.38644), (0.34729, -0.38357), (-0.0005, 0.01705), (-0.30508, 0.37558),
                    (0.29947, 0.37738))
DLIB_5_IN_MTCNN_FRAME = ((0.45145, -0.36253), (0.19258, -0.35862), (-0.46858, -0.36836), (-0.20775, -0.36123),
                         (-0.00823, 0.14052))


def similarity_transform(source, target):
    """The 2x3 similarity (rotation, uniform scale, shift) taking `source` points onto `target`'s,
    least squares (both (n, 2))."""
    import numpy as np

    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    norm = (s ** 2).sum()
    a = (s[:, 0] * t[:, 0] + s[:, 1] * t[:, 1]).sum() / norm
    b = (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum() / norm
    rotation = np.array([[a, -b], [b, a]])
    return np.hstack([rotation, (mu_t - rotation @ mu_s)[:, None]])


def mtcnn_to_dlib_5(points):
    """dlib's five points (image coordinates) predicted from a face's five MTCNN points."""
    import numpy as np

    transform = similarity_transform(MTCNN_MEAN_SHAPE, points)
    return (np.asarray(DLIB_5_IN_MTCNN_FRAME) @ transform[:, :2].T + transform[:, 2]).astype("float32")


register_landmark_scheme(MTCNN_5, mtcnn_to_dlib_5)
register_detector("mtcnn", MtcnnStage, files=(MTCNN_PNET, MTCNN_RNET, MTCNN_ONET),
                  help="CNN cascade with five landmarks: faces from 20 px")
