"""`represent` and `compare` end to end on real faces with the real dlib ResNet in PyTorch."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facenet_cli.align_specs import get_spec
from facenet_cli.cli import app
from facenet_cli.jobs import AlignJob, align_tree
from facenet_cli.reps import read_reps

from .helpers import copy_people

runner = CliRunner()
PEOPLE = {"Colin_Powell": 3, "Serena_Williams": 3, "Tony_Blair": 3}


@pytest.fixture(scope="module")
def aligned_chips(lfw_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("represent")
    raw = copy_people(lfw_images, root / "raw", PEOPLE)
    align_tree(raw, root / "aligned", AlignJob(get_spec("dlib-chip")))
    return root


def test_represent_writes_openface_layout(aligned_chips, tmp_path):
    out = tmp_path / "reps"
    result = runner.invoke(app, ["represent", str(aligned_chips / "aligned"), str(out), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    reps = read_reps(out)
    assert reps.embeddings.shape == (9, 128) and reps.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(reps.embeddings, axis=1), 1.0, atol=1e-5)
    assert sorted(set(reps.labels.tolist())) == [1, 2, 3]
    assert np.allclose(np.loadtxt(out / "reps.csv", delimiter=","), reps.embeddings, atol=1e-6)
    # Identity: each face is nearer to its own person's faces than to anyone else's.
    people = np.array(reps.people)
    d = ((reps.embeddings[:, None] - reps.embeddings[None]) ** 2).sum(-1)
    same = people[:, None] == people[None]
    off_diagonal = ~np.eye(len(people), dtype=bool)
    assert d[same & off_diagonal].max() < d[~same].min()


def test_represent_from_photos_matches_represent_of_aligned(aligned_chips, tmp_path):
    out = tmp_path / "reps"
    result = runner.invoke(app, ["represent", str(aligned_chips / "raw"), str(out), "--photos"])
    assert result.exit_code == 0, result.output
    direct = tmp_path / "direct"
    assert runner.invoke(app, ["represent", str(aligned_chips / "aligned"), str(direct)]).exit_code == 0
    assert np.allclose(read_reps(out).embeddings, read_reps(direct).embeddings, atol=1e-5)


def test_represent_refuses_another_models_alignment(lfw_images, tmp_path):
    raw = copy_people(lfw_images, tmp_path / "raw", {"Colin_Powell": 1})
    align_tree(raw, tmp_path / "aligned96", AlignJob(get_spec("outerEyesAndNose")))
    result = runner.invoke(app, ["represent", str(tmp_path / "aligned96"), str(tmp_path / "reps")])
    assert result.exit_code == 1
    assert "was aligned with outerEyesAndNose at 96 px but dlib-resnet.v1 needs dlib-chip at 150 px" in result.output
    assert "facenet align RAW OUT --model dlib-resnet.v1" in result.output
    assert not (tmp_path / "reps" / "reps.npy").exists()


def test_represent_records_an_unreadable_aligned_image(aligned_chips, tmp_path):
    aligned = tmp_path / "aligned"
    shutil.copytree(aligned_chips / "aligned", aligned)
    (aligned / "Tony_Blair" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = runner.invoke(app, ["represent", str(aligned), str(tmp_path / "reps")])
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "1 unreadable" in result.output and "10 images in all" in result.output
    assert len(read_reps(tmp_path / "reps")) == 9


def test_represent_missing_folder(tmp_path):
    result = runner.invoke(app, ["represent", str(tmp_path / "none"), str(tmp_path / "reps")])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_compare_same_people_are_closer(examples_dir):
    photos = [examples_dir / n for n in ("lennon-1.jpg", "lennon-2.jpg", "clapton-1.jpg", "clapton-2.jpg")]
    result = runner.invoke(app, ["compare", *map(str, photos), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    d = {frozenset((p["a"], p["b"])): p["squared_l2"] for p in data["pairs"]}
    lennon = d[frozenset(("lennon-1.jpg", "lennon-2.jpg"))]
    clapton = d[frozenset(("clapton-1.jpg", "clapton-2.jpg"))]
    cross = [v for k, v in d.items() if k not in (frozenset(("lennon-1.jpg", "lennon-2.jpg")),
                                                  frozenset(("clapton-1.jpg", "clapton-2.jpg")))]
    assert max(lennon, clapton) < min(cross)
    verdicts = {frozenset((p["a"], p["b"])): p["same_person"] for p in data["pairs"]}
    assert verdicts[frozenset(("lennon-1.jpg", "lennon-2.jpg"))]
    assert not any(verdicts[k] for k in d if k not in (frozenset(("lennon-1.jpg", "lennon-2.jpg")),
                                                       frozenset(("clapton-1.jpg", "clapton-2.jpg"))))


def test_compare_numbers_several_faces_and_reports_no_face(examples_dir, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (120, 120, 120)).save(blank)
    result = runner.invoke(app, ["compare", str(examples_dir / "longoria-cooper.jpg"), str(examples_dir / "adams.jpg"),
                                 str(blank), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    labels = [f["label"] for f in data["faces"]]
    assert labels == ["longoria-cooper.jpg#0", "longoria-cooper.jpg#1", "adams.jpg"]
    assert data["problems"] == {"blank.png": "no face found"}
    assert len(data["pairs"]) == 3


def test_compare_distance_of_a_picture_to_itself_is_zero(examples_dir, tmp_path):
    shutil.copy(examples_dir / "carell.jpg", tmp_path / "a.jpg")
    shutil.copy(examples_dir / "carell.jpg", tmp_path / "b.jpg")
    result = runner.invoke(app, ["compare", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--json"])
    assert json.loads(result.stdout)["pairs"][0]["squared_l2"] == pytest.approx(0.0, abs=1e-6)


def test_compare_table_and_unreadable_photo(examples_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    result = runner.invoke(app, ["compare", str(examples_dir / "lennon-1.jpg"), str(examples_dir / "lennon-2.jpg"), str(bad)])
    assert result.exit_code == 0, result.output
    assert "lennon-1.jpg" in result.output and "same" in result.output
    assert "bad.jpg" in result.output and "not an image" in result.output


def test_compare_with_fewer_than_two_faces_fails(examples_dir, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200)).save(blank)
    result = runner.invoke(app, ["compare", str(examples_dir / "adams.jpg"), str(blank)])
    assert result.exit_code == 1
    assert "compare needs at least two faces and found 1" in result.output


def test_represent_flip_averages_with_the_mirror(aligned_chips, tmp_path):
    plain, flipped = tmp_path / "plain", tmp_path / "flip"
    assert runner.invoke(app, ["represent", str(aligned_chips / "aligned"), str(plain)]).exit_code == 0
    result = runner.invoke(app, ["represent", str(aligned_chips / "aligned"), str(flipped), "--flip"])
    assert result.exit_code == 0, result.output
    a, b = read_reps(plain).embeddings, read_reps(flipped).embeddings
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cosine = (a * b).sum(1)
    assert (cosine < 0.99999).all() and (cosine > 0.95).all()  # changed, but the same faces
    assert read_reps(flipped).meta["flip"] is True
