"""t-SNE maps: files, separation of clear clusters, determinism, name errors, the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facenet_cli.cli import app
from facenet_cli.errors import DataError, UsageError
from facenet_cli.formats.reps import RepsWriter, read_reps
from facenet_cli.evaluate.tsne import select_people, tsne_map

DIM = 64  # above PCA's 50, so the PCA step runs


@pytest.fixture(scope="module")
def reps_dir(tmp_path_factory):
    """Two far-apart people with 12 faces each and a third with 3, as a written folder."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("tsne") / "reps"
    people = {"George_W_Bush": 12, "Colin_Powell": 12, "Tony_Blair": 3}
    with RepsWriter(out, sum(people.values()), DIM, {"model": "toy"}) as writer:
        for k, (person, count) in enumerate(people.items()):
            centre = np.zeros(DIM)
            centre[k] = 20.0
            for i in range(count):
                writer.add(f"aligned/{person}/{person}_{i + 1:04d}.png", person, centre + rng.normal(size=DIM))
    return out


def test_two_clusters_land_apart(reps_dir, tmp_path):
    result = tsne_map(reps_dir, tmp_path, names=["George_W_Bush", "Colin Powell"], seed=3)
    people = np.array(result.people)
    assert result.points.shape == (24, 2) and set(people) == {"George_W_Bush", "Colin_Powell"}
    a, b = result.points[people == "George_W_Bush"], result.points[people == "Colin_Powell"]
    # Every point is nearer its own cluster's centre than the other's.
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    assert (np.linalg.norm(a - ca, axis=1) < np.linalg.norm(a - cb, axis=1)).all()
    assert (np.linalg.norm(b - cb, axis=1) < np.linalg.norm(b - ca, axis=1)).all()
    with Image.open(tmp_path / "tsne.png") as image:
        image.verify()
    assert (tmp_path / "tsne.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "tsne.csv").read_text().splitlines()[0] == "person,path,x,y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tsne.csv", "tsne.pdf", "tsne.png"]  # no temp files
    again = tsne_map(reps_dir, tmp_path / "again", names=["George_W_Bush", "Colin_Powell"], seed=3)
    np.testing.assert_array_equal(again.points, result.points)


def test_choosing_people(reps_dir):
    reps = read_reps(reps_dir)
    assert select_people(reps, top=2) == ["Colin_Powell", "George_W_Bush"]  # most faces, ties by name
    with pytest.raises(DataError, match=r"1 of the names .*George_Bush \(did you mean George_W_Bush\?\)"):
        select_people(reps, names=["Tony_Blair", "George_Bush"])
    with pytest.raises(UsageError, match="either names or a top count"):
        select_people(reps, names=["Tony_Blair"], top=2)
    with pytest.raises(UsageError, match="either names or a top count"):
        select_people(reps)


def test_too_few_faces(reps_dir, tmp_path):
    with pytest.raises(DataError, match="3 faces in all"):
        tsne_map(reps_dir, tmp_path, names=["Tony_Blair"])


def test_cli(reps_dir, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["tsne", str(reps_dir), str(tmp_path / "top"), "--top", "2", "--seed", "1"])
    assert ok.exit_code == 0, ok.output
    assert "Mapped 24 faces of 2 people" in ok.stdout
    rows = (tmp_path / "top" / "tsne.csv").read_text().splitlines()[1:]
    assert sorted({r.split(",")[0] for r in rows}) == ["Colin_Powell", "George_W_Bush"] and len(rows) == 24
    named = runner.invoke(app, ["tsne", str(reps_dir), str(tmp_path / "named"), "--names", "Tony_Blair,Colin_Powell",
                                "--json"])
    assert named.exit_code == 0, named.output
    data = json.loads(named.stdout)
    assert data["people"] == {"Tony_Blair": 3, "Colin_Powell": 12} and data["faces"] == 15
    assert data["files"]["png"] == str(tmp_path / "named" / "tsne.png")
    spaced = runner.invoke(app, ["tsne", str(reps_dir), str(tmp_path / "spaced"), "--names", "Tony_Blair",
                                 "Colin_Powell", "George_W_Bush"])
    assert spaced.exit_code == 0, spaced.output
    assert "Mapped 27 faces of 3 people" in spaced.stdout
    stray = runner.invoke(app, ["tsne", str(reps_dir), str(tmp_path), "extra", "--top", "2"])
    assert stray.exit_code == 2 and "put people's names after --names" in stray.stderr
    unknown = runner.invoke(app, ["tsne", str(reps_dir), str(tmp_path), "--names", "Nobody"])
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("Error: 1 of the names have no faces")
    no_out = runner.invoke(app, ["tsne", str(reps_dir), "--top", "2"])
    assert no_out.exit_code == 2 and "missing argument 'out'" in no_out.stderr.lower()
