"""Damaged or missing model files: each is refused with one sentence that names the file and
says how to repair it, before dlib or torch reads a byte of it (never a dlib RuntimeError, never
a broken process pool). The installed files are never touched: $FACENET_DLIB_MODELS points the
catalogue at a folder of links to them, where one file is replaced by a damaged copy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from facenet_cli.models import hub

from facenet_cli.models import resources
from facenet_cli.models.catalogue import CATALOGUE, DEFAULT_MODEL, MODEL_FILES, file_entry
from facenet_cli.errors import ChecksumMismatch, UsageError

from .helpers import copy_people

DLIB_FILES = (resources.SHAPE_PREDICTOR_68, resources.SHAPE_PREDICTOR_5, resources.CNN_FACE_DETECTOR,
              resources.DLIB_RESNET)


def installed(filename: str) -> Path:
    return hub._package_file(file_entry(filename).weights.package, filename)


@pytest.fixture
def dlib_models(tmp_path, monkeypatch):
    """`damage(filename, how)`: a models folder like the installed one, with `filename` damaged
    ("flipped": a few bytes changed, "truncated": cut in half, "missing": absent)."""
    originals = {name: installed(name) for name in DLIB_FILES}  # looked up before the override
    folder = tmp_path / "dlib-models"
    folder.mkdir()
    monkeypatch.setenv(hub.DLIB_MODELS_ENV, str(folder))

    def damage(filename: str, how: str = "flipped") -> Path:
        for name, source in originals.items():
            if name != filename:
                (folder / name).symlink_to(source)
        target = folder / filename
        if how == "missing":
            return target
        data = bytearray(originals[filename].read_bytes())
        if how == "truncated":
            data = data[: len(data) // 2]
        else:
            middle = len(data) // 2
            data[middle:middle + 16] = bytes(255 - b for b in data[middle:middle + 16])
        target.write_bytes(bytes(data))
        return target

    damage.originals = originals
    return damage


def one_sentence(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def error_line(stderr: str) -> str:
    """The command's one `Error: ...` line (a progress bar may stand before it), no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr and "RuntimeError" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_damaged_landmarks_file_is_refused_before_dlib_reads_it(dlib_models, how):
    from facenet_cli.align.aligner import LandmarkPredictor

    bad = dlib_models(resources.SHAPE_PREDICTOR_5, how)
    with pytest.raises(ChecksumMismatch) as info:
        LandmarkPredictor(5)
    message = one_sentence(str(info.value))
    assert str(bad) in message and "dlib-landmarks-5" in message
    assert "pip install --force-reinstall face-recognition-models" in message
    assert file_entry(resources.SHAPE_PREDICTOR_5).weights.sha256 in message
    LandmarkPredictor(68)  # the other files are still fine through the same folder


def test_damaged_cnn_detector_is_refused(dlib_models):
    from facenet_cli.detect import FaceDetector

    bad = dlib_models(resources.CNN_FACE_DETECTOR)
    FaceDetector("hog")  # HOG needs no file
    with pytest.raises(ChecksumMismatch, match="dlib-cnn-detector detector file"):
        FaceDetector("hog+cnn")
    assert hub.status(MODEL_FILES["dlib-cnn-detector"]) == hub.WeightsStatus("checksum-bad", bad)


def test_damaged_resnet_is_refused_by_the_embedder(dlib_models):
    from facenet_cli.nets.embedder import Embedder

    dlib_models(resources.DLIB_RESNET, "truncated")
    with pytest.raises(ChecksumMismatch, match="dlib-resnet.v1 model file .* is damaged"):
        Embedder(CATALOGUE[DEFAULT_MODEL], device="cpu")


def test_missing_file_in_the_override_folder_says_where_it_looked(dlib_models, tmp_path):
    dlib_models(resources.SHAPE_PREDICTOR_68, "missing")
    with pytest.raises(UsageError) as info:
        resources.dlib_model_path(resources.SHAPE_PREDICTOR_68)
    message = one_sentence(str(info.value))
    assert str(tmp_path / "dlib-models") in message and hub.DLIB_MODELS_ENV in message
    assert hub.status(MODEL_FILES["dlib-landmarks-68"]).state == "missing"


@pytest.mark.parametrize("workers", [1, 2])
def test_align_with_a_damaged_landmarks_file_ends_in_one_sentence(dlib_models, lfw_images, tmp_path, run_cli,
                                                                   workers):
    bad = dlib_models(resources.SHAPE_PREDICTOR_5)
    raw = copy_people(lfw_images, tmp_path / "raw", {"Tony_Blair": 2, "Colin_Powell": 2})
    result = run_cli("align", raw, tmp_path / "out", "--workers", workers)
    assert result.exit_code == 1, result.output
    line = error_line(result.stderr)
    assert str(bad) in line and "face-recognition-models" in line
    assert not list((tmp_path / "out").rglob("*.png")) if (tmp_path / "out").exists() else True


def test_align_verifies_in_the_parent_before_any_worker_starts(dlib_models):
    from facenet_cli.align.specs import get_spec

    dlib_models(resources.SHAPE_PREDICTOR_68)
    assert resources.verify_align_models(get_spec("dlib-chip"), "cnn")  # 5 points + CNN: both fine
    with pytest.raises(ChecksumMismatch, match="dlib-landmarks-68"):
        resources.verify_align_models(get_spec("outerEyesAndNose"), "hog")


def test_fetch_models_lists_the_damaged_file_and_fails_to_verify_it(dlib_models, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    bad = dlib_models(resources.SHAPE_PREDICTOR_5, "truncated")
    listed = run_cli("fetch-models", "--list", "--json")
    assert listed.exit_code == 0, listed.output
    states = {row["name"]: row["status"] for row in json.loads(listed.stdout)["files"]}
    assert states == {DEFAULT_MODEL: "present", "dlib-landmarks-68": "present", "dlib-landmarks-5": "checksum-bad",
                      "dlib-cnn-detector": "present",
                      "mtcnn-pnet": "present", "mtcnn-rnet": "present", "mtcnn-onet": "present"}

    fetched = run_cli("fetch-models", "--json")
    assert fetched.exit_code == 1
    document = json.loads(fetched.stdout)
    assert [f["name"] for f in document["failed"]] == ["dlib-landmarks-5"] and document["fetched"] == []
    assert str(bad) in error_line(fetched.stderr)


def test_a_damaged_copy_never_changes_the_installed_file(dlib_models, monkeypatch):
    bad = dlib_models(resources.SHAPE_PREDICTOR_5)
    source = dlib_models.originals[resources.SHAPE_PREDICTOR_5]
    assert bad != source and not bad.is_symlink()
    monkeypatch.delenv(hub.DLIB_MODELS_ENV)
    assert resources.dlib_model_path(resources.SHAPE_PREDICTOR_5) == source  # verified, so intact


# --- verified once, then changed: the stamp in the cache folder must not vouch for it ---------------

@pytest.fixture
def fresh_process(monkeypatch, tmp_path):
    """hub's memory of digests and stamps as in a new process, with a cache folder of its own;
    files changed more than 0.2 s before they are hashed may be stamped (instead of 2 s)."""
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_RACY_SECONDS", 0.2)

    def restart():
        monkeypatch.setattr(hub, "_digests", {})
        monkeypatch.setattr(hub, "_stamps", {})

    restart()
    return restart


def _stamps(tmp_path) -> dict:
    return json.loads((tmp_path / "cache" / hub.VERIFIED_FILES).read_text())["files"]


@pytest.mark.parametrize("change", ["same-size-same-mtime", "replaced"])
def test_a_file_changed_after_it_was_verified_is_hashed_again_and_refused(dlib_models, fresh_process, tmp_path,
                                                                          change):
    import os
    import time

    from facenet_cli.align.aligner import LandmarkPredictor

    good = dlib_models.originals[resources.SHAPE_PREDICTOR_5].read_bytes()
    target = dlib_models(resources.SHAPE_PREDICTOR_5, "flipped")
    target.write_bytes(good)  # a good private copy, to be damaged after it is verified
    time.sleep(0.3)
    assert resources.dlib_model_path(resources.SHAPE_PREDICTOR_5) == target
    stamp = _stamps(tmp_path)[str(target.resolve())]
    assert stamp["sha256"] == file_entry(resources.SHAPE_PREDICTOR_5).weights.sha256

    before = target.stat()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    if change == "replaced":  # a new file put in place (new inode), its times set back to the old ones
        spare = target.with_name("spare")
        spare.write_bytes(bytes(damaged))
        os.replace(spare, target)
    else:  # rewritten in place: same size, mtime set back as it was
        with open(target, "r+b") as fh:
            fh.write(bytes(damaged))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    fresh_process()
    with pytest.raises(ChecksumMismatch) as info:
        LandmarkPredictor(5)
    assert str(target) in one_sentence(str(info.value))
    # Still refused on the next call: no stamp vouches for the file as it is now.
    fresh_process()
    with pytest.raises(ChecksumMismatch):
        resources.dlib_model_path(resources.SHAPE_PREDICTOR_5)
    now = target.stat()
    recorded = _stamps(tmp_path).get(str(target.resolve()), {})
    assert not (recorded.get("sha256") == stamp["sha256"] and recorded.get("inode") == now.st_ino
                and recorded.get("ctime_ns") == now.st_ctime_ns)


def test_an_unchanged_verified_file_is_not_hashed_again(dlib_models, fresh_process, tmp_path, monkeypatch):
    dlib_models(resources.SHAPE_PREDICTOR_68)  # the 5-point file stays a link to the installed one
    resources.dlib_model_path(resources.SHAPE_PREDICTOR_5)
    source = dlib_models.originals[resources.SHAPE_PREDICTOR_5]
    assert str(source.resolve()) in _stamps(tmp_path)

    fresh_process()
    hashed = []
    real_hash = hub._hash_file
    monkeypatch.setattr(hub, "_hash_file", lambda path: hashed.append(path) or real_hash(path))
    assert resources.dlib_model_path(resources.SHAPE_PREDICTOR_5).resolve() == source.resolve()
    assert hashed == []
    # A damaged stamp file is no reason to fail: the file is hashed and stamped again.
    (tmp_path / "cache" / hub.VERIFIED_FILES).write_text("{not json")
    fresh_process()
    assert resources.dlib_model_path(resources.SHAPE_PREDICTOR_5).resolve() == source.resolve()
    assert hashed == [str(source.resolve())]
    assert str(source.resolve()) in _stamps(tmp_path)


def test_a_file_written_just_now_is_not_stamped(dlib_models, fresh_process, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_RACY_SECONDS", 2.0)
    target = dlib_models(resources.SHAPE_PREDICTOR_5, "flipped")
    target.write_bytes(dlib_models.originals[resources.SHAPE_PREDICTOR_5].read_bytes())
    assert resources.dlib_model_path(resources.SHAPE_PREDICTOR_5) == target  # verified...
    stamps_file = tmp_path / "cache" / hub.VERIFIED_FILES
    assert not stamps_file.exists() or str(target.resolve()) not in _stamps(tmp_path)  # ...but not stamped
