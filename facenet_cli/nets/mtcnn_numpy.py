"""The parts of MTCNN (facenet_cli/nets/mtcnn.py) that need no PyTorch: reading the weights files,
cutting the crops the networks see, and O-net in numpy for `--detector hog-onet`.

Why O-net twice: `hog-onet` (the default detector) runs O-net once per chosen face, and a command
that runs no network of its own otherwise (`facenet align`; `facenet compare`, which embeds a
handful of faces with dlib's C++ network) would pay 1.7 s to import torch for it. In numpy O-net
costs about 1.2 ms a face on one core (PyTorch about 0.9 ms) and gives the same outputs to 1e-6
(tests/test_hog_onet.py checks it against the PyTorch port, which tests/test_mtcnn.py checks
against the ONNX graphs).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError

# The reference MTCNN's face probability each of P-, R- and O-net must exceed (here, not in
# nets/mtcnn.py, so that hog-onet reads O-net's without importing torch).
THRESHOLDS = (0.6, 0.7, 0.7)

# O-net's weights as the `mtcnn` wheel stores them (Keras layout: kernels HWIO, PReLU alphas,
# dense kernels (in, out)); nets/mtcnn.py's ONet.SHAPES says the same.
ONET_SHAPES = [(3, 3, 3, 32), (32,), (1, 1, 32), (3, 3, 32, 64), (64,), (1, 1, 64), (3, 3, 64, 64), (64,),
               (1, 1, 64), (2, 2, 64, 128), (128,), (1, 1, 128), (1152, 256), (256,), (256,), (256, 4), (4,),
               (256, 10), (10,), (256, 2), (2,)]


def read_weights(path) -> list:
    """The arrays of one `.lz4` weights file (verify its checksum first: it is a pickle)."""
    import joblib

    try:
        arrays = joblib.load(str(path))
    except Exception as error:  # joblib raises many kinds on a damaged file
        raise DataError(f"{path} is not an MTCNN weights file that joblib can read ({type(error).__name__}); "
                        "reinstall mtcnn with `pip install --force-reinstall mtcnn==1.0.0`.") from None
    return list(arrays) if isinstance(arrays, (list, tuple)) else arrays


def crops(image: np.ndarray, boxes: np.ndarray, size: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each box's pixels (zeros outside the image) resized to size x size, as float32, and the
    indices of the boxes that have a positive width and height (the others are dropped). The
    reference takes a box's pixels from (x1 - 1, y1 - 1) to (x2 - 1, y2 - 1) (its MATLAB
    ancestry counts from 1); so do we, to give its boxes. The reference resizes float pixels;
    `exact=False` resizes the uint8 ones (values rounded, the same to half a grey level): 6x
    less time on the big faces of a 12 Mpx photo, where O-net only places landmarks."""
    import cv2

    height, width = image.shape[:2]
    out, kept = [], []
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        w, h = x2 - x1 + 1, y2 - y1 + 1
        if w <= 0 or h <= 0:
            continue
        sx0, sy0 = max(x1 - 1, 0), max(y1 - 1, 0)
        sx1, sy1 = min(x2, width), min(y2, height)  # exclusive ends of the source rows/columns
        inside = sx0 == x1 - 1 and sy0 == y1 - 1 and sx1 - sx0 == w and sy1 - sy0 == h
        if not exact and inside:
            tmp = image[sy0:sy1, sx0:sx1]
        else:
            tmp = np.zeros((h, w, 3), np.float32 if exact else np.uint8)
            if sx1 > sx0 and sy1 > sy0:
                tmp[sy0 - (y1 - 1):sy1 - (y1 - 1), sx0 - (x1 - 1):sx1 - (x1 - 1)] = image[sy0:sy1, sx0:sx1]
        out.append(cv2.resize(tmp, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32, copy=False))
        kept.append(k)
    return (np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)), np.asarray(kept, dtype=np.int64)


class NumpyOnet:
    """O-net on 48x48 crops, one at a time, in float32 numpy: (box offsets (4,), landmarks (10,)
    as x1..x5, y1..y5 fractions of the crop, face probability)."""

    def __init__(self, weights: list):
        got = [tuple(np.shape(a)) for a in weights] if isinstance(weights, (list, tuple)) else None
        if got != ONET_SHAPES:
            raise DataError(f"The MTCNN O-net weights hold arrays of shapes {got}, not those of the mtcnn 1.0.0 "
                            "package; reinstall it with `pip install --force-reinstall mtcnn==1.0.0`.")
        w = [np.asarray(a, dtype=np.float32) for a in weights]
        # Convolutions as one matrix product over the image's patches: kernels (kh*kw*in, out),
        # patches laid out row by row, column by column, then channels (HWIO's order).
        self.convs = [(w[i].reshape(-1, w[i].shape[3]), w[i + 1], w[i + 2], w[i].shape[0])
                      for i in (0, 3, 6, 9)]
        self.fc5, self.fc5_bias, self.prelu5 = w[12], w[13], w[14]
        self.heads = [(w[15], w[16]), (w[17], w[18]), (w[19], w[20])]

    @staticmethod
    def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, alpha: np.ndarray, k: int) -> np.ndarray:
        h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
        patches = np.concatenate([x[i:i + h, j:j + w] for i in range(k) for j in range(k)], axis=2)
        y = (patches.reshape(h * w, -1) @ kernel).reshape(h, w, -1) + bias
        return np.maximum(y, 0) + alpha * np.minimum(y, 0)  # PReLU

    @staticmethod
    def _pool(x: np.ndarray, k: int, stride: int, ceil: bool) -> np.ndarray:
        """Max pooling as PyTorch's max_pool2d (no padding; `ceil`: a last window may hang over)."""
        import cv2

        size = [(-(-(n - k) // stride) if ceil else (n - k) // stride) + 1 for n in x.shape[:2]]
        need = [(o - 1) * stride + k for o in size]
        if need[0] > x.shape[0] or need[1] > x.shape[1]:
            x = np.pad(x, ((0, max(need[0] - x.shape[0], 0)), (0, max(need[1] - x.shape[1], 0)), (0, 0)),
                       constant_values=-np.inf)
        # The max over each k x k window (OpenCV's dilation, anchored at the window's top left),
        # then every stride-th window: 3x faster than k*k strided numpy maxima.
        window = cv2.dilate(np.ascontiguousarray(x[:need[0], :need[1]]), np.ones((k, k), np.uint8), anchor=(0, 0),
                            borderType=cv2.BORDER_CONSTANT, borderValue=-np.inf)
        return window[:need[0] - k + 1:stride, :need[1] - k + 1:stride]

    def __call__(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """O-net on one crop (48, 48, 3): (box offsets (4,), landmarks (10,), face probability).
        One crop at a time: batching the crops of a group photo measured slower here (the
        patches of 20 crops no longer fit the caches)."""
        x = (np.asarray(crop, dtype=np.float32) - 127.5) * (1.0 / 128.0)
        (k1, b1, a1, s1), (k2, b2, a2, s2), (k3, b3, a3, s3), (k4, b4, a4, s4) = self.convs
        x = self._pool(self._conv(x, k1, b1, a1, s1), 3, 2, True)
        x = self._pool(self._conv(x, k2, b2, a2, s2), 3, 2, False)
        x = self._pool(self._conv(x, k3, b3, a3, s3), 2, 2, True)
        x = self._conv(x, k4, b4, a4, s4)
        f = x.transpose(1, 0, 2).reshape(-1) @ self.fc5 + self.fc5_bias  # Keras' flatten: x, then y, then channel
        f = np.maximum(f, 0) + self.prelu5 * np.minimum(f, 0)
        (box, box_b), (points, points_b), (face, face_b) = self.heads
        logits = f @ face + face_b
        odds = np.exp(logits - logits.max())
        return f @ box + box_b, f @ points + points_b, float(odds[1] / odds.sum())

    def landmarks(self, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (n, 10) and face probabilities (n,) of a stack of crops (n, 48, 48, 3)."""
        with _one_blas_thread():
            outputs = [self(crop) for crop in cut]
        return (np.stack([o[1] for o in outputs]) if outputs else np.zeros((0, 10), np.float32),
                np.array([o[2] for o in outputs], dtype=np.float32))

    def points_on(self, rgb: np.ndarray, boxes: np.ndarray, network=None) -> tuple[np.ndarray, np.ndarray]:
        """O-net on boxes found by another detector (x1, y1, x2, y2, square): each box's five
        landmarks (n, 5, 2) and face probability (n,), no threshold, no suppression (a box without
        pixels gets NaN points and probability 0). As Mtcnn.output places O-net's points.
        `network`: another `landmarks(crops)` to run O-net with (the PyTorch port), else this one."""
        boxes = np.fix(np.asarray(boxes, dtype=np.float64)[:, :4])
        points = np.full((len(boxes), 5, 2), np.nan)
        scores = np.zeros(len(boxes))
        cut, kept = crops(rgb, boxes, 48, exact=False)
        found_points, found_scores = (network or self.landmarks)(cut) if len(kept) else ([], [])
        for found, score, k in zip(found_points, found_scores, kept):
            scores[k] = score
            x1, y1, x2, y2 = boxes[k]
            found = found.astype(np.float64)
            points[k] = np.stack([(x2 - x1 + 1) * found[0:5] + x1 - 1, (y2 - y1 + 1) * found[5:10] + y1 - 1], axis=1)
        return points, scores


_blas = None


def _one_blas_thread():
    """numpy's BLAS on one thread for O-net's small products: spread over two threads they took
    10x longer here (1.4 ms a face against 13 ms). A controller made once: limiting through it
    costs microseconds, not the milliseconds of a fresh `threadpool_limits`."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")
