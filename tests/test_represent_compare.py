"""`represent` and `compare` end to end on real faces with the real dlib ResNet in PyTorch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facenet_cli.align.specs import get_spec
from facenet_cli.cli import app
from facenet_cli.align.job import AlignJob, align_tree
from facenet_cli.formats.reps import read_reps

from .helpers import copy_people

runner = CliRunner()


def error_line(stderr: str) -> str:
    """The one `Error: ` line of a failed command (progress bars share stderr)."""
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]
PEOPLE = {"Colin_Powell": 3, "Serena_Williams": 3, "Tony_Blair": 3}


@pytest.fixture(scope="module")
def aligned_chips(lfw_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("represent")
    raw = copy_people(lfw_images, root / "raw", PEOPLE)
    align_tree(raw, root / "aligned", AlignJob(get_spec("dlib-chip")))
    return root


def test_represent_writes_openface_layout(aligned_chips, tmp_path):
    out = tmp_path / "reps"
    result = runner.invoke(app, ["represent", str(aligned_chips / "aligned"), str(out), "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"embedded": 9, "unreadable": 0, "wrong-size": 0, "bad-name": 0}
    assert (summary["images"], summary["faces"], summary["problems"]) == (9, 9, [])
    assert summary["files"]["reps.npy"] == str(out / "reps.npy") and summary["dimension"] == 128
    reps = read_reps(out)
    assert reps.meta["aligned"] == str((aligned_chips / "aligned").resolve()) and reps.meta["normalised"] is True
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
    result = runner.invoke(app, ["represent", str(aligned_chips / "raw"), str(out), "--photos", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the align summary goes into the JSON, not before it
    assert summary["align"]["total"] == 9 and summary["align"]["counts"]["aligned"]["total"] == 9
    assert summary["counts"]["embedded"] == 9
    direct = tmp_path / "direct"
    assert runner.invoke(app, ["represent", str(aligned_chips / "aligned"), str(direct)]).exit_code == 0
    assert np.allclose(read_reps(out).embeddings, read_reps(direct).embeddings, atol=1e-5)


def test_represent_photos_takes_the_align_options(aligned_chips, tmp_path):
    """--photos aligns with the detection options given, as `facenet align` would: with
    --faces skip-multi and a photo of two people, that photo is an outcome, not a face."""
    raw = tmp_path / "raw"
    shutil.copytree(aligned_chips / "raw" / "Tony_Blair", raw / "Tony_Blair")
    (raw / "Pair").mkdir()
    two = Image.open(aligned_chips / "raw" / "Tony_Blair" / "Tony_Blair_0001.jpg")
    canvas = Image.new("RGB", (two.width * 2, two.height))
    canvas.paste(two, (0, 0))
    canvas.paste(two, (two.width, 0))
    canvas.save(raw / "Pair" / "Pair_0001.jpg")
    result = runner.invoke(app, ["represent", str(raw), str(tmp_path / "reps"), "--photos", "--faces", "skip-multi",
                                 "--upsample", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["align"]["counts"]["multiple-faces"]["total"] == 1 and summary["counts"]["embedded"] == 3
    assert read_reps(tmp_path / "reps").people == ["Tony_Blair"] * 3


def test_represent_refuses_another_models_alignment(lfw_images, tmp_path):
    raw = copy_people(lfw_images, tmp_path / "raw", {"Colin_Powell": 1})
    align_tree(raw, tmp_path / "aligned96", AlignJob(get_spec("outerEyesAndNose")))
    result = runner.invoke(app, ["represent", str(tmp_path / "aligned96"), str(tmp_path / "reps")])
    assert result.exit_code == 1
    assert "was aligned with outerEyesAndNose at 96 px but dlib-resnet.v1 needs dlib-chip at 150 px" in result.output
    assert "facenet align RAW OUT --model dlib-resnet.v1" in result.output
    assert not (tmp_path / "reps" / "reps.npy").exists()


def test_represent_records_every_problem_and_the_counts_add_up(aligned_chips, tmp_path):
    aligned = tmp_path / "aligned"
    shutil.copytree(aligned_chips / "aligned", aligned)
    (aligned / "Tony_Blair" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    shutil.copy(aligned / "Tony_Blair" / "Tony_Blair_0001.png", aligned / "Tony_Blair" / "line\nbreak.png")
    result = runner.invoke(app, ["represent", str(aligned), str(tmp_path / "reps")])
    assert result.exit_code == 0, result.output
    assert "9 embeddings" in result.stdout and "1 unreadable, 0 wrong size, 1 bad names; 11 images in all" in result.stdout
    assert "unreadable Tony_Blair/broken.png:" in result.stderr
    assert "bad-name Tony_Blair/line\\nbreak.png: the file name holds a line break" in result.stderr
    reps = read_reps(tmp_path / "reps")
    assert len(reps) == 9 and not any("break" in p for p in reps.paths)
    assert len((tmp_path / "reps" / "labels.csv").read_text().splitlines()) == 9


def test_represent_a_crop_of_another_size_is_an_outcome(aligned_chips, tmp_path):
    aligned = tmp_path / "aligned"
    shutil.copytree(aligned_chips / "aligned", aligned)
    (aligned / "align-spec.json").unlink()  # a folder from another tool: sizes are checked per image
    Image.open(aligned / "Tony_Blair" / "Tony_Blair_0001.png").resize((96, 96)).save(aligned / "Tony_Blair" / "small.png")
    result = runner.invoke(app, ["represent", str(aligned), str(tmp_path / "reps"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"embedded": 9, "unreadable": 0, "wrong-size": 1, "bad-name": 0}
    assert summary["problems"] == [{"path": "Tony_Blair/small.png", "outcome": "wrong-size", "reason": "96x96, not 150x150"}]


def test_represent_with_nothing_embeddable_fails_and_writes_nothing(tmp_path):
    aligned = tmp_path / "aligned" / "P"
    aligned.mkdir(parents=True)
    (aligned / "a.png").write_bytes(b"not a png")
    (aligned / "b.png").write_bytes(b"")
    result = runner.invoke(app, ["represent", str(tmp_path / "aligned"), str(tmp_path / "reps")])
    assert result.exit_code == 1
    assert error_line(result.stderr).startswith("Error: None of the 2 images in") and "nothing was written" in result.stderr
    assert list((tmp_path / "reps").iterdir()) == []


def test_represent_missing_folder(tmp_path):
    result = runner.invoke(app, ["represent", str(tmp_path / "none"), str(tmp_path / "reps")])
    assert result.exit_code == 2  # a usage error: the argument names no folder
    assert error_line(result.stderr).startswith("Error: The aligned folder") and "does not exist" in result.stderr


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


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of a rich table's body rows."""
    return [[c.strip() for c in line.strip("│ ").split("│")] for line in stdout.splitlines() if line.count("│") == 5]


def test_compare_table_and_unreadable_photo(examples_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    result = runner.invoke(app, ["compare", str(examples_dir / "lennon-1.jpg"), str(examples_dir / "lennon-2.jpg"),
                                 str(examples_dir / "clapton-1.jpg"), str(bad)])
    assert result.exit_code == 0, result.output
    verdicts = {(a, b): verdict for a, b, _, verdict in table_rows(result.stdout)}
    assert verdicts == {("lennon-1.jpg", "lennon-2.jpg"): "same", ("lennon-1.jpg", "clapton-1.jpg"): "different",
                        ("lennon-2.jpg", "clapton-1.jpg"): "different"}
    assert "bad.jpg" in result.stderr and "not an image" in result.stderr


def test_compare_takes_the_detection_options(examples_dir, tmp_path):
    photo = str(examples_dir / "longoria-cooper.jpg")
    every = json.loads(runner.invoke(app, ["compare", photo, str(examples_dir / "adams.jpg"), "--json"]).stdout)
    assert len(every["faces"]) == 3  # --faces all is compare's default
    largest = runner.invoke(app, ["compare", photo, str(examples_dir / "adams.jpg"), "--faces", "largest", "--json"])
    assert largest.exit_code == 0, largest.output
    assert [f["label"] for f in json.loads(largest.stdout)["faces"]] == ["longoria-cooper.jpg", "adams.jpg"]
    skipped = runner.invoke(app, ["compare", photo, str(examples_dir / "adams.jpg"), str(examples_dir / "carell.jpg"),
                                  "--faces", "skip-multi", "--json"])
    data = json.loads(skipped.stdout)
    assert data["problems"] == {"longoria-cooper.jpg": "2 faces found (--faces skip-multi)"}
    bad = runner.invoke(app, ["compare", photo, photo, "--detector", "nope"])
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: ")


def test_compare_fallbacks(examples_dir, tmp_path):
    blank = tmp_path / "photos" / "lennon.jpg"
    blank.parent.mkdir()
    Image.new("RGB", (250, 250), (128, 128, 128)).save(blank)
    (tmp_path / "stand-ins").mkdir()
    shutil.copy(examples_dir / "lennon-1.jpg", tmp_path / "stand-ins" / "lennon.jpg")
    result = runner.invoke(app, ["compare", str(blank), str(examples_dir / "lennon-2.jpg"),
                                 "--fallback-dir", str(tmp_path / "stand-ins"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [f["fallback"] for f in data["faces"]] == [True, False]
    assert data["pairs"][0]["same_person"] and data["pairs"][0]["squared_l2"] < 0.15  # lennon-1 vs lennon-2
    centre = runner.invoke(app, ["compare", str(blank), str(examples_dir / "lennon-2.jpg"), "--fallback", "center",
                                 "--json"])
    assert centre.exit_code == 0, centre.output
    assert [f["fallback"] for f in json.loads(centre.stdout)["faces"]] == [True, False]
    none = runner.invoke(app, ["compare", str(blank), str(examples_dir / "lennon-2.jpg"), "--json"])
    assert none.exit_code == 1 and json.loads(none.stdout)["problems"] == {"lennon.jpg": "no face found"}


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


@pytest.mark.parametrize("workers, where", [(1, "this process"), (2, "this process"), (2, "the workers")])
def test_represent_photos_embeds_the_crops_while_aligning(aligned_chips, tmp_path, monkeypatch, workers, where):
    """represent --photos embeds each fresh crop as align makes it (no PNG read back): in a
    thread of this process (CropsEmbedder), or with a worker per core in the align workers
    themselves (WorkerEmbedding); it reads from disk only the crops an earlier run aligned, and
    the rows equal represent_tree's either way."""
    import facenet_cli.pipeline.represent as represent_module
    from facenet_cli.nets.embedder import Embedder
    from facenet_cli.models.hub import resolve_model
    from facenet_cli.pipeline.represent import represent_photos, represent_tree

    embedder = Embedder(resolve_model("dlib-resnet.v1"), device="cpu", batch_size=4, engine="torch")
    job = AlignJob(spec=embedder.record.align)
    raw, out = aligned_chips / "raw", tmp_path / "reps"
    # An earlier run aligned one person: those 3 crops are on disk, the other 6 are fresh.
    align_tree(raw, out / "aligned", job)
    for crop in (out / "aligned" / "Serena_Williams").iterdir():
        crop.unlink()
    (out / "aligned" / "Tony_Blair").rename(tmp_path / "blair")
    reads = []
    real_read = represent_module.read_rgb
    monkeypatch.setattr(represent_module, "read_rgb", lambda path: reads.append(path) or real_read(path))
    in_workers = where == "the workers"
    monkeypatch.setattr(represent_module, "embeds_in_workers", lambda embedder, workers: in_workers)
    unused = "WorkerEmbedding" if not in_workers else "CropsEmbedder"
    monkeypatch.setattr(represent_module, unused, lambda *a, **k: pytest.fail(f"{unused} used"))
    align_report, report = represent_photos(raw, out, embedder, job, workers=workers)
    assert align_report.counts["aligned"] == 9 and report.count == 9
    assert sorted(p.parent.name for p in reads) == ["Colin_Powell"] * 3
    monkeypatch.setattr(represent_module, "read_rgb", real_read)
    direct = represent_tree(out / "aligned", tmp_path / "direct", embedder)
    assert direct.count == 9
    mine, theirs = read_reps(out), read_reps(tmp_path / "direct")
    assert [Path(p).name for p in mine.paths] == [Path(p).name for p in theirs.paths]
    assert np.allclose(mine.embeddings, theirs.embeddings, atol=1e-5)
