"""`--detector hog-fast`: dlib's frontal HOG filter first, all five filters only where it finds
no face the policy accepts. Real LFW photos, the real detectors."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from facenet_cli.detect import FaceDetector, _hog_model, frontal_sub_detector, hog_filter_spans
from facenet_cli.errors import DataError


def lfw_photos(lfw_images, count: int) -> list[np.ndarray]:
    files = sorted(lfw_images.glob("*/*.jpg"))[::211][:count]  # many people, not the first few
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]


@pytest.fixture(scope="module")
def photos(lfw_images):
    return lfw_photos(lfw_images, 40)


def test_the_cut_out_filter_is_dlibs_frontal_one(photos):
    """Where the full detector's box comes from its first (frontal) filter, the cut-out detector
    gives that very box and score; elsewhere it gives another box or none."""
    full, frontal = _hog_model(), frontal_sub_detector(_hog_model())
    from_frontal = other = 0
    for photo in photos:
        rects, scores, which = full.run(photo, 0, 0.0)
        mine, my_scores, my_which = frontal.run(photo, 0, 0.0)
        assert set(my_which) <= {0}  # one filter left
        if rects and which[0] == 0:
            from_frontal += 1
            assert (mine[0].left(), mine[0].top(), mine[0].right(), mine[0].bottom()) == \
                (rects[0].left(), rects[0].top(), rects[0].right(), rects[0].bottom())
            assert my_scores[0] == pytest.approx(scores[0], abs=1e-9)
        elif rects:
            other += 1
    assert from_frontal >= 15 and other >= 3  # both kinds of photo were seen


def test_hog_fast_finds_a_face_wherever_hog_does(photos):
    """The frontal filter first, then all five: every photo where plain HOG finds a face gets one,
    the same box where the frontal filter found it, and the very result of plain HOG where the
    frontal filter found nothing."""
    plain, fast = FaceDetector("hog", "auto"), FaceDetector("hog-fast", "auto")
    frontal = frontal_sub_detector(_hog_model())
    same_box = 0
    for photo in photos:
        mine, theirs = fast.detect(photo), plain.detect(photo)
        assert bool(mine) == bool(theirs)
        if not frontal.run(photo, 0, 0.0)[0]:
            assert mine == theirs  # the frontal filter found nothing: plain HOG's own search
        same_box += mine == theirs
    assert same_box >= 20  # most LFW faces look ahead: the same box as plain HOG


def test_a_policy_that_refuses_the_frontal_faces_gets_all_five_filters(photos):
    """center-only refuses an off-centre face: the frontal filter's faces are then searched
    again with all five filters (as plain HOG would), not reported as no face."""
    fast = FaceDetector("hog-fast", "auto")
    photo = photos[0]
    calls = []
    real = fast._detect_at
    fast._detect_at = lambda image, kind, level, frontal=False: calls.append(frontal) or real(image, kind, level,
                                                                                           frontal)
    assert fast.detect(photo, accept=lambda boxes: []) == []
    assert calls == [True, False]  # level 0: frontal, then all five; something was found: no upsampling


def test_a_detector_file_of_another_layout_is_one_sentence(monkeypatch):
    with pytest.raises(ValueError):
        hog_filter_spans(b"\x01\x05" + bytes(100))

    class Garbage:
        def save(self, path):
            with open(path, "wb") as fh:
                fh.write(b"\x01\x05not a detector")

    with pytest.raises(DataError, match="use --detector hog"):
        frontal_sub_detector(Garbage())


def test_align_cli_with_hog_fast(lfw_images, tmp_path, run_cli):
    raw = tmp_path / "raw"
    for f in sorted(lfw_images.glob("*/*.jpg"))[::1500][:6]:
        (raw / f.parent.name).mkdir(parents=True, exist_ok=True)
        (raw / f.parent.name / f.name).write_bytes(f.read_bytes())
    result = run_cli("align", raw, tmp_path / "out", "--detector", "hog-fast", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"]["aligned"]["total"] >= 5 and report["total"] == 6
    spec = json.loads((tmp_path / "out" / "align-spec.json").read_text())
    assert spec["detector"] == "hog-fast"
