"""Alignment on real LFW faces: right, not just shaped right; parallel equals serial; resumable."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from facenet_cli.align import FaceAligner, LandmarkPredictor, center_box, choose_faces
from facenet_cli.align_specs import MINMAX_TEMPLATE, get_spec
from facenet_cli.detect import FaceBox, FaceDetector
from facenet_cli.errors import MultipleFaces
from facenet_cli.images import read_rgb
from facenet_cli.jobs import AlignJob, align_tree, list_inputs

from .helpers import copy_people, png_decodes_fully

PEOPLE = {"Aaron_Peirsol": 4, "Serena_Williams": 4, "Gerhard_Schroeder": 4}


def test_minmax_template_is_openface_normalisation():
    assert MINMAX_TEMPLATE.min(axis=0) == pytest.approx([0, 0])
    assert MINMAX_TEMPLATE.max(axis=0) == pytest.approx([1, 1])
    # OpenFace's outer eyes sit left and right of the nose, all in the upper half.
    left, right, nose = MINMAX_TEMPLATE[[36, 45, 33]]
    assert left[0] < nose[0] < right[0] and max(left[1], right[1]) < nose[1] < 0.6


@pytest.mark.parametrize("spec_name", ["outerEyesAndNose", "innerEyesAndBottomLip"])
def test_landmarks_land_on_template_points(lfw_images, spec_name):
    """Warp real faces, find the landmarks again in the output: they sit on the template."""
    spec = get_spec(spec_name, 96)
    aligner = FaceAligner(spec, upsample=1)
    predictor = LandmarkPredictor(68)
    errors = []
    for person in PEOPLE:
        for path in sorted((lfw_images / person).iterdir())[:3]:
            rgb = read_rgb(path)
            face = aligner.align(rgb)[0]
            # Map the detection box into the aligned image, then predict landmarks afresh there.
            matrix = cv2.getAffineTransform(face.landmarks[list(spec.indices)], spec.template_points().astype(np.float32))
            corners = np.array([[face.box.left, face.box.top, 1], [face.box.right, face.box.bottom, 1]], np.float64)
            (l, t), (r, b) = corners @ matrix.T
            again = LandmarkPredictor.to_array(predictor.shape(face.image, FaceBox(int(l), int(t), int(r), int(b))))
            errors.append(np.linalg.norm(again[list(spec.indices)] - spec.template_points(), axis=1))
    errors = np.concatenate(errors)
    # A few pixels at 96: a wrong template, index order or transform is off by tens of pixels.
    assert np.median(errors) < 1.5, errors
    assert np.percentile(errors, 90) < 4.0, errors


def test_dlib_chip_matches_dlib(lfw_images):
    """Our dlib-chip spec produces exactly dlib's own chip for the same face."""
    import dlib

    from facenet_cli.resources import SHAPE_PREDICTOR_5, dlib_model_path

    path = sorted((lfw_images / "Serena_Williams").iterdir())[0]
    rgb = read_rgb(path)
    face = FaceAligner(get_spec("dlib-chip"), upsample=1).align(rgb)[0]
    detector = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(dlib_model_path(SHAPE_PREDICTOR_5)))
    rect = max(detector(rgb, 1), key=lambda r: r.area())
    expected = dlib.get_face_chip(rgb, sp(rgb, rect), size=150, padding=0.25)
    assert face.image.shape == (150, 150, 3)
    assert np.array_equal(face.image, expected)


def test_face_policies_on_two_faces(examples_dir):
    rgb = read_rgb(examples_dir / "longoria-cooper.jpg")
    boxes = FaceDetector("hog", 1).detect(rgb)
    assert len(boxes) == 2
    h, w = rgb.shape[:2]
    assert choose_faces(boxes, "largest", h, w) == [max(boxes, key=lambda b: b.area)]
    assert len(choose_faces(boxes, "all", h, w)) == 2
    with pytest.raises(MultipleFaces):
        choose_faces(boxes, "skip-multi", h, w)
    moved = [FaceBox(0, 0, 10, 10), FaceBox(w // 2 - 5, h // 2 - 5, w // 2 + 5, h // 2 + 5), FaceBox(0, 0, 500, 500)]
    assert choose_faces(moved, "center", h, w) == [moved[1]]
    # center-only ignores faces that do not cover the centre, even when they are all there is.
    assert choose_faces([moved[0]], "center", h, w) == [moved[0]]
    assert choose_faces([moved[0]], "center-only", h, w) == []
    assert choose_faces(moved, "center-only", h, w) == [moved[1]]


def test_center_fallback_aligns_an_undetected_face(lfw_images):
    rgb = read_rgb(sorted((lfw_images / "Aaron_Peirsol").iterdir())[0])
    box = center_box(*rgb.shape[:2])
    detected = max(FaceDetector("hog", 1).detect(rgb), key=lambda b: b.area)
    # The assumed box overlaps the real face well on a centred LFW image.
    inter = max(0, min(box.right, detected.right) - max(box.left, detected.left)) * \
        max(0, min(box.bottom, detected.bottom) - max(box.top, detected.top))
    assert inter / (box.area + detected.area - inter) > 0.5
    face = FaceAligner(get_spec("outerEyesAndNose"), fallback="center").align_box(rgb, box, fallback=True)
    assert face.image.shape == (96, 96, 3) and face.fallback


def test_workers_two_equals_workers_one_byte_for_byte(lfw_images, tmp_path):
    raw = copy_people(lfw_images, tmp_path / "raw", PEOPLE)
    job = AlignJob(get_spec("outerEyesAndNose"))
    one = align_tree(raw, tmp_path / "one", job, workers=1)
    two = align_tree(raw, tmp_path / "two", job, workers=2)
    assert one.counts == two.counts and one.counts["aligned"] == 12
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 12
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_resume_after_kill_completes_the_set(lfw_images, tmp_path):
    people = {"George_W_Bush": 60}
    raw = copy_people(lfw_images, tmp_path / "raw", people)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facenet_cli", "align", str(raw), str(out), "--landmarks", "outerEyesAndNose",
           "--upsample", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.png"))) < 10:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = list(out.rglob("*.png"))
    assert 0 < len(written) < 60, "the run must be killed part way"
    assert all(png_decodes_fully(p) for p in written), "a killed run left a truncated image"

    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    final = sorted(out.rglob("*.png"))
    assert len(final) == 60 and all(png_decodes_fully(p) for p in final)
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files left behind"
    report = (out / "align-report.csv").read_text().splitlines()
    assert len(report) == 61
    assert sum("done-before" in line for line in report) >= len(written)


def test_list_inputs_skips_hidden_and_sorts(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ["b/2.jpg", "b/1.jpg", "a.jpg", ".DS_Store", ".git/x.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    assert list_inputs(tmp_path) == ["a.jpg", "b/1.jpg", "b/2.jpg"]


def test_center_only_hands_a_bystander_image_to_the_cnn(lfw_images):
    """Tung_Chee-hwa_0001: HOG finds only the man beside him; center-only asks the CNN instead."""
    rgb = read_rgb(lfw_images / "Tung_Chee-hwa" / "Tung_Chee-hwa_0001.jpg")
    h, w = rgb.shape[:2]
    hog = FaceDetector("hog", "auto").detect(rgb)
    assert hog and choose_faces(hog, "center-only", h, w) == []
    face = FaceAligner(get_spec("dlib-chip"), detector="hog+cnn", upsample="auto", faces="center-only").align(rgb)[0]
    assert face.box.left <= w / 2 <= face.box.right and face.box.top <= h / 2 <= face.box.bottom
    assert not face.fallback


def test_hog_then_cnn_finds_a_face_hog_misses(lfw_images):
    """Jelena_Dokic_0004: HOG finds no face even upsampled; the CNN second pass does."""
    rgb = read_rgb(lfw_images / "Jelena_Dokic" / "Jelena_Dokic_0004.jpg")
    assert FaceDetector("hog", "auto").detect(rgb) == []
    boxes = FaceDetector("hog+cnn", 0).detect(rgb)
    assert len(boxes) >= 1
    face = choose_faces(boxes, "center", *rgb.shape[:2])[0]
    cx, cy = face.center
    assert 80 < cx < 170 and 80 < cy < 170  # the labelled, centred person
