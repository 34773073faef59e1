"""Every fast path against the plain one, on real faces: dlib's engine for small jobs vs the
PyTorch network, test-time augmentation, the cached HOG detector, `compare` without torch."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facenet_cli.models.catalogue import get_record
from facenet_cli.nets.embedder import SMALL_JOB_PASSES, Embedder, jitter_matrices, jittered
from tests._dlib_chips import lfw_chips

RECORD = get_record("dlib-resnet.v1")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chips(lfw_images):
    return lfw_chips(lfw_images, 3)


@pytest.fixture(scope="module")
def torch_embedder():
    return Embedder(RECORD, device="cpu", engine="torch")


@pytest.mark.parametrize("flip", [False, True])
def test_dlib_engine_equals_torch(chips, flip):
    ours = Embedder(RECORD, device="cpu", flip=flip, engine="torch").embed(chips, raw=True)
    dlibs = Embedder(RECORD, device="cpu", flip=flip, engine="dlib").embed(chips, raw=True)
    np.testing.assert_allclose(dlibs, ours, atol=1e-5)


def test_auto_engine_routes_by_job_size(chips):
    small = Embedder(RECORD, device="cpu", engine="auto")
    small.embed(chips[:2])
    assert small._dlib_net is not None and small._network is None
    big = Embedder(RECORD, device="cpu", engine="auto", flip=True, tta=SMALL_JOB_PASSES)
    big.embed(chips[:1])  # 2 x (1 + 8) passes: past the small-job limit
    assert big._network is not None and big._dlib_net is None


def test_jitter_copies_are_small_deterministic_moves(chips):
    matrices = jitter_matrices(8, 150)
    np.testing.assert_array_equal(matrices, jitter_matrices(8, 150))
    scales = np.sqrt(np.abs(np.linalg.det(matrices[:, :, :2])))
    assert np.all((scales > 0.96) & (scales < 1.0))  # the crop box is 1/0.99-1/0.97 of 144 px
    copies = jittered(chips[0], matrices)
    differences = [np.abs(c.astype(int) - chips[0].astype(int)).mean() for c in copies]
    assert all(0.5 < d < 40 for d in differences), differences


def test_tta_averages_jittered_copies(chips, torch_embedder):
    tta = Embedder(RECORD, device="cpu", tta=4, engine="torch")
    vectors = tta.embed(chips)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    # Equal to averaging the raw vectors of the copies by hand.
    copies = [[chip, *jittered(chip, jitter_matrices(4, 150))] for chip in chips]
    by_hand = np.stack([torch_embedder.embed(c, raw=True).mean(0) for c in copies])
    by_hand /= np.linalg.norm(by_hand, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, by_hand, atol=1e-5)
    plain = torch_embedder.embed(chips)
    moved = ((vectors - plain) ** 2).sum(1)
    assert np.all((moved > 1e-5) & (moved < 0.02)), moved  # a change, smaller than a verdict's margin
    # Both engines see the same copies.
    np.testing.assert_allclose(Embedder(RECORD, device="cpu", tta=4, engine="dlib").embed(chips), vectors, atol=1e-5)


def test_cached_hog_detector_finds_the_same_faces(lfw_images, tmp_path, monkeypatch):
    import dlib

    from facenet_cli.models.hub import cached_hog_detector, hog_detector_cache
    from facenet_cli.images import read_rgb

    monkeypatch.setenv("FACENET_CACHE", str(tmp_path))
    photos = [read_rgb(p) for p in sorted(lfw_images.glob("A*/*_0001.jpg"))[:3]]
    reference = dlib.get_frontal_face_detector()

    def boxes(detector):
        return [[(r.left(), r.top(), r.right(), r.bottom(), round(s, 6)) for r, s in zip(*detector.run(p, 1, 0.0)[:2])]
                for p in photos]

    expected = boxes(reference)
    assert all(expected)
    assert boxes(cached_hog_detector()) == expected  # built, then written to the cache
    path = hog_detector_cache()
    digest_file = path.with_name(path.name + ".sha256")
    assert digest_file.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert boxes(cached_hog_detector()) == expected  # read from the cache

    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # damaged: truncated
    assert boxes(cached_hog_detector()) == expected
    assert path.read_bytes() == good  # rebuilt
    digest_file.write_text("0" * 64 + "\n")  # stale digest
    assert boxes(cached_hog_detector()) == expected
    assert digest_file.read_text().strip() == hashlib.sha256(good).hexdigest()


def test_compare_of_two_photos_imports_no_torch(examples_dir, torch_embedder, tmp_path):
    script = (
        "import sys\n"
        "from facenet_cli.cli import app\n"
        "try:\n"
        f"    app(['compare', {str(examples_dir / 'lennon-1.jpg')!r}, {str(examples_dir / 'lennon-2.jpg')!r}, '--json'])\n"
        "except SystemExit as exit:\n"
        "    print('TORCH', 'torch' in sys.modules, exit.code, file=sys.stderr)\n"
    )
    env = dict(os.environ, FACENET_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert "TORCH False 0" in done.stderr, done.stderr
    result = json.loads(done.stdout)
    # The same distance as the PyTorch network gives on the same faces.
    from facenet_cli.pipeline.face_pipeline import FacePipeline
    from facenet_cli.recognition.compare import compare_photos

    pipeline = FacePipeline.of_embedder(torch_embedder)  # hog, upsample auto, every face
    expected = compare_photos([examples_dir / "lennon-1.jpg", examples_dir / "lennon-2.jpg"], pipeline)
    assert result["pairs"][0]["squared_l2"] == pytest.approx(float(expected.distances[0, 1]), abs=1e-5)
    assert result["pairs"][0]["same_person"] is True


def test_photos_aligned_in_forked_workers_give_the_same_faces(examples_dir, tmp_path, monkeypatch):
    """compare's parallel alignment (the local executor: forked processes sharing the loaded
    models) against the plain loop: the same faces, boxes, embeddings and problems, in input order."""
    from facenet_cli.pipeline import face_pipeline
    from facenet_cli.recognition import compare

    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (120, 90), (128, 128, 128)).save(blank)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((examples_dir / "clapton-1.jpg").read_bytes()[:300])
    photos = [examples_dir / "lennon-1.jpg", broken, examples_dir / "clapton-1.jpg", blank,
              examples_dir / "lennon-2.jpg"]
    pipeline = face_pipeline.FacePipeline.of_embedder(Embedder(RECORD, device="cpu", engine="dlib"))

    pids = tmp_path / "pids"
    plain_align_photo = face_pipeline.align_photo

    def recording(path, *args):
        with open(pids, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return plain_align_photo(path, *args)

    monkeypatch.setattr(face_pipeline, "align_photo", recording)
    serial_faces, serial_problems = compare.find_faces(photos, pipeline, workers=1)
    assert set(pids.read_text().split()) == {str(os.getpid())}
    pids.unlink()
    parallel_faces, parallel_problems = compare.find_faces(photos, pipeline, workers=3)
    workers = set(pids.read_text().split())
    assert str(os.getpid()) not in workers and 1 <= len(workers) <= 3  # forked processes aligned them all

    assert [f.label for f in serial_faces] == ["lennon-1.jpg", "clapton-1.jpg", "lennon-2.jpg"]
    assert set(serial_problems) == {"broken.jpg", "blank.png"}
    assert parallel_problems == serial_problems
    assert [(f.label, f.path, f.box, f.fallback) for f in parallel_faces] == \
        [(f.label, f.path, f.box, f.fallback) for f in serial_faces]
    np.testing.assert_array_equal(np.stack([f.embedding for f in parallel_faces]),
                                  np.stack([f.embedding for f in serial_faces]))
