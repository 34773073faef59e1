"""Alignment on real LFW faces: right, not just shaped right; parallel equals serial; bounded
detection on huge images; the whole-image fallback. (Kills, full disks: test_faults_align.py.)"""
from __future__ import annotations

import dataclasses
import functools
import time

import cv2
import numpy as np
import pytest

from facenet_cli.align.aligner import FaceAligner, LandmarkPredictor, center_box, choose_faces
from facenet_cli.align.specs import MINMAX_TEMPLATE, get_spec
from facenet_cli.detect import PIXEL_BUDGET, UPSAMPLE_BUDGET, FaceBox, FaceDetector, detection_plan
from facenet_cli.errors import MultipleFaces, NoFace, UsageError
from facenet_cli.images import read_rgb
from facenet_cli.align.job import AlignJob, align_tree, list_inputs

from .helpers import copy_people

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

    from facenet_cli.models.resources import SHAPE_PREDICTOR_5, dlib_model_path

    path = sorted((lfw_images / "Serena_Williams").iterdir())[0]
    rgb = read_rgb(path)
    face = FaceAligner(get_spec("dlib-chip"), detector="hog", upsample=1).align(rgb)[0]  # dlib's detector and predictor
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


# ---------------------------------------------------------------- pixel budgets

def test_upsampling_stays_within_the_pixel_budget():
    hog = (UPSAMPLE_BUDGET["hog"], PIXEL_BUDGET["hog"])
    cnn = (UPSAMPLE_BUDGET["cnn"], PIXEL_BUDGET["cnn"])
    # An LFW image still gets the adaptive levels 0, 1, 2, under both detectors.
    assert detection_plan(250, 250, "auto", *hog).levels == (0, 1, 2)
    assert detection_plan(250, 250, "auto", *cnn).levels == (0, 1, 2)
    # A 3000x3000 photo gets level 0 only, at full resolution for HOG.
    assert detection_plan(3000, 3000, "auto", *hog) == detection_plan(3000, 3000, 2, *hog)
    assert detection_plan(3000, 3000, "auto", *hog).levels == (0,)
    assert detection_plan(3000, 3000, "auto", *hog).scale == 1.0
    # An explicit level is capped too: --upsample 4 on an LFW image is 16 Mpx for HOG, 16 Mpx for the CNN.
    assert detection_plan(250, 250, 4, *hog).levels == (3,)
    assert detection_plan(250, 250, 4, *cnn).levels == (2,)
    # Above the pixel budget the image is searched downscaled: the CNN never sees more than 1 Mpx.
    for height, width in [(3000, 3000), (6000, 4000), (20000, 500)]:
        for budget in (hog, cnn):
            plan = detection_plan(height, width, "auto", *budget)
            seen = int(height * plan.scale) * int(width * plan.scale) * 4 ** max(plan.levels)
            assert seen <= budget[1], (height, width, plan)
    assert detection_plan(3000, 3000, "auto", *cnn).scale == pytest.approx((PIXEL_BUDGET["cnn"] / 9e6) ** 0.5)


def _canvas_with_face(face: np.ndarray, height: int, width: int, at: tuple[int, int]) -> np.ndarray:
    canvas = np.full((height, width, 3), 128, np.uint8)
    top, left = at
    canvas[top:top + face.shape[0], left:left + face.shape[1]] = face
    return canvas


def test_face_in_a_large_photo_is_found_and_aligned_at_full_resolution(lfw_images):
    """A real face pasted into a 3000x2400 photo: found without upsampling the 7 Mpx, and
    aligned from the full-resolution pixels (landmarks where they are in the original)."""
    rgb = read_rgb(lfw_images / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    aligner = FaceAligner(get_spec("dlib-chip"), upsample="auto")
    reference = aligner.align(rgb)[0]
    top, left = 1700, 2300
    canvas = _canvas_with_face(rgb, 2400, 3000, (top, left))
    started = time.perf_counter()
    found = aligner.align(canvas)
    assert time.perf_counter() - started < 20
    assert len(found) == 1 and not found[0].fallback
    assert np.abs(found[0].landmarks - (reference.landmarks + [left, top])).max() <= 2
    assert np.abs(found[0].image.astype(int) - reference.image.astype(int)).mean() < 6


def test_downscaled_detection_maps_boxes_back(lfw_images):
    """Over the pixel budget the detector searches a downscaled copy (real HOG and CNN); boxes
    come back in the photo's coordinates and the landmarks use its full resolution."""
    rgb = read_rgb(lfw_images / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    big = cv2.resize(rgb, (400, 400), interpolation=cv2.INTER_CUBIC)  # a face big enough to survive 1/2
    top, left = 350, 420
    canvas = _canvas_with_face(big, 800, 900, (top, left))
    truth = FaceDetector("hog", 0).detect(big)[0]
    for kind in ("hog", "cnn"):
        detector = FaceDetector(kind, 0, pixel_budget=160_000)
        plan = detector.plan(kind, 800, 900)
        assert plan.scale < 0.5
        boxes = detector.detect(canvas)
        assert len(boxes) == 1, kind
        cx, cy = boxes[0].center
        assert abs(cx - (left + truth.center[0])) < 25 and abs(cy - (top + truth.center[1])) < 25, (kind, boxes)
        assert 0.6 < boxes[0].width / truth.width < 1.6, (kind, boxes)
    aligned = FaceAligner(get_spec("dlib-chip"), upsample=0, pixel_budget=160_000).align(canvas)[0]
    reference = FaceAligner(get_spec("dlib-chip"), upsample=0).align(big)[0]
    assert np.abs(aligned.landmarks - (reference.landmarks + [left, top])).max() <= 3


def test_huge_photo_without_a_face_is_quick(tmp_path):
    """3000x3000 without a face under --upsample auto: level 0 only, so seconds, not the 32 s
    and 2 GB of upsampling it twice."""
    from PIL import Image

    raw = tmp_path / "raw" / "p"
    raw.mkdir(parents=True)
    ramp = np.linspace(0, 255, 3000, dtype=np.float32)
    Image.fromarray((np.add.outer(ramp, ramp) / 2).astype(np.uint8)).save(raw / "wall.png")
    started = time.perf_counter()
    report = align_tree(raw.parent, tmp_path / "out", AlignJob(get_spec("dlib-chip"), upsample="auto"))
    assert time.perf_counter() - started < 15
    assert [o.status for o in report.outcomes] == ["no-face"]


# ---------------------------------------------------------------- --fallback whole, --size

def test_whole_fallback_aligns_a_tight_face_crop(lfw_images):
    """A tight face crop (as exported by other tools) is too small for the detector at upsample
    0; --fallback whole takes the whole crop as the face box and lands on the real landmarks."""
    rgb = read_rgb(lfw_images / "George_W_Bush" / "George_W_Bush_0001.jpg")
    # HOG's five filters on colour miss this crop (hog-onet's frontal filter on grey finds it)
    aligner = functools.partial(FaceAligner, get_spec("dlib-chip"), detector="hog", upsample=0)
    reference = aligner().align(rgb)[0]
    box = reference.box
    top, left = box.top + 10, box.left + 10
    crop = np.ascontiguousarray(rgb[top:box.bottom - 10, left:box.right - 10])
    with pytest.raises(NoFace):
        aligner().align(crop)
    face = aligner(fallback="whole").align(crop)[0]
    assert face.fallback and (face.box.left, face.box.top) == (0, 0)
    assert (face.box.right, face.box.bottom) == (crop.shape[1] - 1, crop.shape[0] - 1)
    assert np.median(np.linalg.norm(face.landmarks + [left, top] - reference.landmarks, axis=1)) < 3
    # The centre box of such a crop is a face-sized box inside the face: the landmarks go astray.
    centre = aligner(fallback="center").align(crop)[0]
    assert np.median(np.linalg.norm(centre.landmarks + [left, top] - reference.landmarks, axis=1)) > \
        np.median(np.linalg.norm(face.landmarks + [left, top] - reference.landmarks, axis=1))


@pytest.mark.parametrize("size", [0, 15, 2049])
def test_size_out_of_range_is_refused_by_the_library(size):
    spec = dataclasses.replace(get_spec("dlib-chip"), size=size)
    with pytest.raises(UsageError, match=f"--size must be between 16 and 2048 pixels, not {size}."):
        AlignJob(spec)
    with pytest.raises(UsageError, match="--size must be between 16 and 2048"):
        FaceAligner(spec)


def test_align_job_checks_and_normalises_its_values():
    from facenet_cli.choices import Fallback

    job = AlignJob(get_spec("dlib-chip"), upsample="2", fallback=Fallback.whole)
    assert job.upsample == 2 and job.fallback == "whole" and type(job.fallback) is str
    with pytest.raises(UsageError, match="--fallback must be one of none, center, whole, not 'sideways'"):
        AlignJob(get_spec("dlib-chip"), fallback="sideways")


def test_output_names_never_share_a_name_or_a_folder():
    from facenet_cli.formats.aligned import output_names

    inputs = ["p/A.jpg", "p/a.jpg", "p/a.jpg.png", "p/a.png", "x.jpg", "x.png/y.jpg", "z.jpg"]
    stems, collisions = output_names(inputs)
    assert stems == {"p/A.jpg": "p/A.jpg", "p/a.jpg.png": "p/a.jpg.png", "p/a.png": "p/a.png",
                     "x.jpg": "x.jpg",  # not x.png: that is the folder of x.png/y.jpg's crop
                     "x.png/y.jpg": "x.png/y", "z.jpg": "z"}
    assert collisions == {"p/a.jpg": "p/A.jpg"}
    numbered, clashes = output_names(["g/a.jpg", "g/a_0.jpg", "g/a_1.png"], numbered=True)
    assert numbered == {"g/a.jpg": "g/a", "g/a_0.jpg": "g/a_0", "g/a_1.png": "g/a_1"} and clashes == {}
