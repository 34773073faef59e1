"""The detector seam (facenet_cli/detect/): the registry, the built-in detectors giving the very
boxes the code before it gave, and a detector defined here, in one class and one registration,
that gives five landmarks with its boxes, used through FaceAligner and align_tree on real photos."""
from __future__ import annotations

import numpy as np
import pytest

from facenet_cli import choices

from facenet_cli.models import resources
from facenet_cli.align.aligner import FaceAligner, LandmarkPredictor
from facenet_cli.align.specs import get_spec
from facenet_cli.detect import (DLIB_5, FaceBox, FaceDetector, create_detector, detector_files, detector_names,
                                register_detector, unregister_detector)
from facenet_cli.detect.hog import HogStage
from facenet_cli.errors import NoFace, UsageError
from facenet_cli.images import read_rgb

# Boxes (left, top, right, bottom, score to 6 places) of the detectors at upsample "auto", as the
# single-module detect.py before the registry gave them (git show 2f6ca69:facenet_cli/detect.py).
BEFORE = {
    "hog": {"longoria-cooper.jpg": [(53, 133, 125, 205, 2.033398), (157, 53, 229, 125, 1.809116)],
            "carell.jpg": [(95, 233, 405, 542, 2.702165)], "clapton-2.jpg": [(194, 95, 344, 244, 2.450664)]},
    "hog-fast": {"longoria-cooper.jpg": [(157, 53, 229, 125, 1.809116), (53, 133, 125, 205, 1.779685)],
                 "carell.jpg": [(95, 233, 405, 542, 2.702165)], "clapton-2.jpg": [(194, 95, 344, 244, 2.450664)]},
    "cnn": {"longoria-cooper.jpg": [(44, 132, 123, 211, 1.062445), (156, 44, 235, 123, 1.023146)],
            "carell.jpg": [(59, 213, 398, 553, 1.062476)], "clapton-2.jpg": [(191, 59, 355, 222, 1.058943)]},
    "hog+cnn": {"longoria-cooper.jpg": [(53, 133, 125, 205, 2.033398), (157, 53, 229, 125, 1.809116)],
                "carell.jpg": [(95, 233, 405, 542, 2.702165)], "clapton-2.jpg": [(194, 95, 344, 244, 2.450664)]},
}
LFW_BEFORE = {  # hog, hog-fast and hog+cnn agree on these; the CNN's own boxes
    "hog": {"Aaron_Peirsol/Aaron_Peirsol_0001.jpg": [(77, 89, 181, 192, 1.63087)],
            "George_W_Bush/George_W_Bush_0010.jpg": [(77, 89, 181, 192, 1.749783)],
            "Serena_Williams/Serena_Williams_0003.jpg": [(77, 89, 181, 192, 2.060355)]},
    "cnn": {"Aaron_Peirsol/Aaron_Peirsol_0001.jpg": [(63, 66, 177, 180, 1.060451)],
            "George_W_Bush/George_W_Bush_0010.jpg": [(81, 86, 176, 181, 1.050322)],
            "Serena_Williams/Serena_Williams_0003.jpg": [(72, 77, 167, 171, 1.055027)]},
}


def _boxes(boxes: list[FaceBox]) -> list[tuple]:
    return [(b.left, b.top, b.right, b.bottom, round(b.score, 6)) for b in boxes]


# ------------------------------------------------------------- a detector added in one class


class HogWithLandmarks(HogStage):
    """dlib's HOG boxes with the five points of dlib's 5-point predictor: what a CNN detector
    that finds landmarks itself gives (issue 20), with points whose alignment is known."""

    landmarks = DLIB_5

    def __init__(self):
        super().__init__()
        self._points = LandmarkPredictor(5)

    def find(self, rgb, level):
        return [FaceBox(b.left, b.top, b.right, b.bottom, b.score,
                        LandmarkPredictor.to_array(self._points.shape(rgb, b)))
                for b in super().find(rgb, level)]


NAME = "test-hog-5points"


@pytest.fixture
def landmark_detector():
    register_detector(NAME, HogWithLandmarks, files=(resources.SHAPE_PREDICTOR_5,))
    yield NAME
    unregister_detector(NAME)


@pytest.fixture(scope="module")
def lfw_files(lfw_images):
    return sorted(lfw_images.glob("*/*.jpg"))[::523][:10]  # many people


class _NoPredictor:
    def shape(self, rgb, box):
        raise AssertionError("the shape predictor ran on a box that came with its landmarks")


def test_a_detector_with_landmarks_aligns_as_the_predictor_does(landmark_detector, lfw_files):
    """dlib-chip (a 5-point template): the detector's points are used and the predictor never
    runs on its boxes; the crops are byte-identical to HOG + predictor."""
    spec = get_spec("dlib-chip")
    mine = FaceAligner(spec, detector=landmark_detector, upsample="auto")
    plain = FaceAligner(spec, detector="hog", upsample="auto")
    mine._landmarks = _NoPredictor()
    for path in lfw_files:
        rgb = read_rgb(path)
        ours, theirs = mine.align(rgb), plain.align(rgb)
        assert len(ours) == len(theirs) == 1, path
        assert ours[0].box == theirs[0].box and ours[0].box.landmarks is not None
        np.testing.assert_array_equal(ours[0].landmarks, theirs[0].landmarks)
        np.testing.assert_array_equal(ours[0].image, theirs[0].image)
    # align_file takes the same path
    np.testing.assert_array_equal(mine.align_file(lfw_files[0])[0].image, plain.align_file(lfw_files[0])[0].image)


def test_landmarks_the_template_is_not_defined_on_are_not_used(landmark_detector, lfw_files):
    """68-point templates: the predictor runs on the detector's box, as for any detector."""
    spec = get_spec("dlib-chip68")
    mine = FaceAligner(spec, detector=landmark_detector, upsample="auto")
    plain = FaceAligner(spec, detector="hog", upsample="auto")
    rgb = read_rgb(lfw_files[1])
    ours, theirs = mine.align(rgb)[0], plain.align(rgb)[0]
    assert ours.landmarks.shape == (68, 2)
    np.testing.assert_array_equal(ours.image, theirs.image)
    mine._landmarks = _NoPredictor()
    with pytest.raises(AssertionError, match="shape predictor ran"):
        mine.align(rgb)


def test_a_fallback_box_without_landmarks_gets_the_predictor(landmark_detector):
    aligner = FaceAligner(get_spec("dlib-chip"), detector=landmark_detector, upsample=0, fallback="center")
    grey = np.full((200, 200, 3), 128, np.uint8)
    face = aligner.align(grey)[0]
    assert face.fallback and face.landmarks.shape == (5, 2)
    with pytest.raises(NoFace):
        FaceAligner(get_spec("dlib-chip"), detector=landmark_detector, upsample=0).align(grey)


def test_align_tree_with_a_detector_registered_at_run_time(landmark_detector, lfw_files, tmp_path):
    """The library's batch path (AlignJob, two forked workers) takes the new name; the aligned
    PNGs are the very files of --detector hog."""
    from facenet_cli.align.job import AlignJob, align_tree

    raw = tmp_path / "raw"
    for path in lfw_files[:6]:
        (raw / path.parent.name).mkdir(parents=True, exist_ok=True)
        (raw / path.parent.name / path.name).write_bytes(path.read_bytes())
    spec = get_spec("dlib-chip")
    ours = align_tree(raw, tmp_path / "ours", AlignJob(spec, detector=landmark_detector), workers=2)
    theirs = align_tree(raw, tmp_path / "theirs", AlignJob(spec, detector="hog"), workers=1)
    assert ours.counts["aligned"] == theirs.counts["aligned"] == 6
    pngs = sorted(p.relative_to(tmp_path / "theirs") for p in (tmp_path / "theirs").rglob("*.png"))
    assert len(pngs) == 6
    for rel in pngs:
        assert (tmp_path / "ours" / rel).read_bytes() == (tmp_path / "theirs" / rel).read_bytes(), rel


# ------------------------------------------------------------- the registry


def test_each_builtin_detector_describes_itself_in_help(run_cli):
    """--help's words for --detector come from each detector's own file, so a new file is
    described without touching the CLI."""
    from facenet_cli.detect import detector_entry

    # The help wraps inside rich's panel: its border characters are not words.
    text = " ".join(run_cli("align", "--help", env={"COLUMNS": "400"}).stdout.replace("│", " ").split())
    for name in detector_names(builtin_only=True):
        entry = detector_entry(name)
        assert entry.help and f"{name} ({entry.help})" in text, name


def test_the_builtin_detectors_are_the_clis_choices():
    assert detector_names(builtin_only=True) == ("hog", "cnn", "hog+cnn", "hog-fast", "hog-onet", "mtcnn")
    assert choices.values(choices.Detector) == detector_names(builtin_only=True)
    assert choices.Detector.hog_cnn.value == "hog+cnn" and str(choices.Detector.hog_fast) == "hog-fast"
    assert detector_files("cnn") == detector_files("hog+cnn") == (resources.CNN_FACE_DETECTOR,)
    assert detector_files("hog") == detector_files("hog-fast") == ()
    assert FaceDetector(choices.Detector.hog_fast, 0).kind == "hog-fast"  # the CLI's enum member


def test_a_runtime_detector_is_listed_but_not_a_cli_choice(landmark_detector):
    assert landmark_detector in detector_names()
    assert landmark_detector not in detector_names(builtin_only=True)
    assert landmark_detector not in choices.values(choices.Detector)
    assert resources.align_model_files(get_spec("dlib-chip"), landmark_detector) == [resources.SHAPE_PREDICTOR_5]
    assert create_detector(landmark_detector, upsample=0).landmarks == DLIB_5
    assert create_detector("hog").landmarks is None


def test_an_unknown_detector_is_one_sentence():
    from facenet_cli.align.job import AlignJob

    for build in (lambda: create_detector("yolo"), lambda: FaceAligner(get_spec("dlib-chip"), detector="yolo"),
                  lambda: AlignJob(get_spec("dlib-chip"), detector="yolo"),
                  lambda: resources.align_model_files(get_spec("dlib-chip"), "yolo")):
        with pytest.raises(UsageError) as info:
            build()
        message = str(info.value)
        assert message == "--detector must be one of hog, cnn, hog+cnn, hog-fast, hog-onet, mtcnn, not 'yolo'."


def test_the_cli_refuses_an_unknown_detector_before_loading(run_cli, tmp_path):
    done = run_cli("align", str(tmp_path), str(tmp_path / "out"), "--detector", "yolo")
    assert done.exit_code != 0 and "yolo" in done.stderr
    assert not (tmp_path / "out").exists()


def test_registering_a_taken_name_is_refused(landmark_detector):
    for name in ("hog", "cnn", landmark_detector):
        with pytest.raises(ValueError, match="registered twice"):
            register_detector(name, HogStage)
    with pytest.raises(ValueError):
        unregister_detector("hog")  # the built-in ones stay
    with pytest.raises(ValueError):
        register_detector("", HogStage)
    with pytest.raises(ValueError):
        register_detector("two words,", HogStage)


def test_a_cascade_needs_distinct_stage_names():
    register_detector("test-hog-twice", (HogStage, HogStage))
    try:
        with pytest.raises(ValueError, match="its own name"):
            create_detector("test-hog-twice")
    finally:
        unregister_detector("test-hog-twice")


def test_face_boxes_carry_landmarks_through_scaling():
    points = np.array([[10, 20], [30, 20], [60, 22], [80, 20], [45, 50]], np.float32)
    box = FaceBox(0, 0, 100, 100, 1.5, points)
    big = box.scaled(2.0, 3.0)
    np.testing.assert_array_equal(big.landmarks, points * [2.0, 3.0])
    assert big == FaceBox(0, 0, 200, 300, 1.5)  # a box is the same box with or without its points
    assert FaceBox(1, 2, 3, 4).scaled(2, 2).landmarks is None


# ------------------------------------------------------------- the built-in detectors, unchanged


@pytest.mark.parametrize("kind", list(BEFORE))
def test_builtin_detectors_give_the_boxes_they_gave_before(kind, examples_dir, lfw_images):
    detector = create_detector(kind, upsample="auto")
    for name, boxes in BEFORE[kind].items():
        assert _boxes(detector.detect(read_rgb(examples_dir / name))) == boxes, (kind, name)
    for name, boxes in LFW_BEFORE["cnn" if kind == "cnn" else "hog"].items():
        assert _boxes(detector.detect(read_rgb(lfw_images / name))) == boxes, (kind, name)
