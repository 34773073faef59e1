"""The representation folder: streaming writes that land whole or not at all, and reads."""
from __future__ import annotations

import json

import numpy as np
import pytest

from facenet_cli.errors import DataError, UsageError
from facenet_cli.reps import RepsWriter, read_reps

DIM = 4


def write_folder(out, faces, count=None, meta=None):
    """faces: (path, person, rows) in the order they are added."""
    with RepsWriter(out, count or sum(len(np.atleast_2d(r)) for _, _, r in faces), DIM, meta or {"model": "m"}) as w:
        for path, person, rows in faces:
            w.add(path, person, rows)
    return out


def sample_faces(rng=np.random.default_rng(0)):
    # Added out of name order, so class ids must come from sorting, not from arrival.
    return [
        ("aligned/Zoe/Zoe_0001.png", "Zoe", rng.normal(size=DIM)),
        ("aligned/Adam/Adam_0001.png", "Adam", rng.normal(size=(2, DIM))),  # two faces in one image
        ("aligned/Mia/Mia_0001.png", "Mia", rng.normal(size=(1, DIM))),
        ("aligned/Adam/Adam_0002.png", "Adam", rng.normal(size=DIM)),
    ]


def test_round_trip_labels_embeddings_and_meta(tmp_path):
    faces = sample_faces()
    out = write_folder(tmp_path / "reps", faces, meta={"model": "nn4.small2.v1", "align": {"size": 96}})
    reps = read_reps(out)
    expected = np.vstack([np.atleast_2d(r) for _, _, r in faces]).astype(np.float32)
    assert reps.paths == ["aligned/Zoe/Zoe_0001.png", "aligned/Adam/Adam_0001.png", "aligned/Adam/Adam_0001.png",
                          "aligned/Mia/Mia_0001.png", "aligned/Adam/Adam_0002.png"]
    assert reps.labels.tolist() == [3, 1, 1, 2, 1]  # Adam=1, Mia=2, Zoe=3
    assert reps.people == ["Zoe", "Adam", "Adam", "Mia", "Adam"]
    assert reps.embeddings.dtype == np.float32
    np.testing.assert_array_equal(reps.embeddings, expected)
    assert reps.meta == {"model": "nn4.small2.v1", "align": {"size": 96}, "dimension": DIM, "count": 5}
    assert (out / "labels.csv").read_text().splitlines()[0] == "3,aligned/Zoe/Zoe_0001.png"
    # reps.csv holds the same numbers, bit for bit, and is read when reps.npy is absent.
    (out / "reps.npy").unlink()
    np.testing.assert_array_equal(read_reps(out).embeddings, expected)
    assert sorted(p.name for p in out.iterdir()) == ["labels.csv", "meta.json", "reps.csv"]


def test_fewer_faces_than_count_are_trimmed(tmp_path):
    out = write_folder(tmp_path / "reps", sample_faces(), count=1000)
    assert np.load(out / "reps.npy").shape == (5, DIM)
    assert (out / "reps.npy").stat().st_size < 1000 * DIM * 4
    assert json.loads((out / "meta.json").read_text())["count"] == 5


def test_exception_leaves_nothing_and_keeps_the_previous_run(tmp_path):
    out = write_folder(tmp_path / "reps", sample_faces())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError):
        with RepsWriter(out, 10, DIM, {}) as w:
            w.add("a/B/B_0001.png", "B", np.ones(DIM))
            raise RuntimeError("model crashed")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with RepsWriter(fresh, 10, DIM, {}) as w:
            w.add("a/B/B_0001.png", "B", np.ones(DIM))
            raise RuntimeError("model crashed")
    assert list(fresh.iterdir()) == []


def test_writer_refuses_bad_rows(tmp_path):
    with pytest.raises(UsageError, match="dimension 4"):
        with RepsWriter(tmp_path / "a", 3, DIM, {}) as w:
            w.add("x/P/P_0001.png", "P", np.ones(DIM + 1))
    with pytest.raises(UsageError, match="larger count"):
        with RepsWriter(tmp_path / "b", 1, DIM, {}) as w:
            w.add("x/P/P_0001.png", "P", np.ones((2, DIM)))
    with pytest.raises(DataError, match="NaN"):
        with RepsWriter(tmp_path / "c", 1, DIM, {}) as w:
            w.add("x/P/P_0001.png", "P", np.full(DIM, np.nan))
    with pytest.raises(DataError, match="No face was added"):
        with RepsWriter(tmp_path / "d", 1, DIM, {}):
            pass
    with pytest.raises(UsageError, match="JSON"):
        RepsWriter(tmp_path / "e", 1, DIM, {"bad": object()})
    for folder in "abcd":
        assert not any((tmp_path / folder).iterdir())


def test_reads_openface_folder_without_npy_or_meta(tmp_path):
    (tmp_path / "labels.csv").write_text("1.0,./aligned/A/A_0001.png\n2.0,./aligned/B/B_0001.png\n")
    (tmp_path / "reps.csv").write_text("0.1,0.2,0.3\n0.4,0.5,0.6\n")
    reps = read_reps(tmp_path)
    assert reps.labels.tolist() == [1, 2]
    assert reps.embeddings.shape == (2, 3)
    assert reps.meta == {}


@pytest.mark.parametrize("labels, reps_csv, message", [
    ("1,a/A/A_0001.png\n1,a/A/A_0002.png\n", "0.1,0.2\n", "2 labels but 1 embeddings"),
    ("", "0.1,0.2\n", "labels.csv is empty"),
    ("1,a/A/A_0001.png\n", "", "reps.csv is empty"),
    ("one,a/A/A_0001.png\n", "0.1,0.2\n", "line 1 is not `class_id,path`"),
    ("1,a/A/A_0001.png,extra\n", "0.1,0.2\n", "line 1 is not `class_id,path`"),
    ("1,a/A/A_0001.png\n", "0.1,zero\n", "not rows of comma-separated numbers"),
    ("1,a/A/A_0001.png\n2,a/B/B_0001.png\n", "0.1,0.2\n0.3\n", "not rows of comma-separated numbers"),
])
def test_malformed_folders_are_data_errors(tmp_path, labels, reps_csv, message):
    (tmp_path / "labels.csv").write_text(labels)
    (tmp_path / "reps.csv").write_text(reps_csv)
    with pytest.raises(DataError, match=message):
        read_reps(tmp_path)


def test_missing_pieces_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_reps(tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no labels.csv"):
        read_reps(tmp_path)
    (tmp_path / "labels.csv").write_text("1,a/A/A_0001.png\n")
    with pytest.raises(DataError, match="neither reps.npy nor reps.csv"):
        read_reps(tmp_path)
    (tmp_path / "reps.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="not a readable .npy"):
        read_reps(tmp_path)
    np.save(tmp_path / "reps.npy", np.ones((1, 2), np.float32))
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        read_reps(tmp_path)
