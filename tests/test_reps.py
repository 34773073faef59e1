"""The representation folder: streaming writes that land whole or not at all, leftovers of killed
runs cleaned, and reads that refuse damaged or mismatched files with one sentence."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from facenet_cli.errors import DataError, UsageError
from facenet_cli.formats.reps import RepsWriter, file_sha256, read_reps

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


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


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
    assert reps.meta == {"model": "nn4.small2.v1", "align": {"size": 96}, "dimension": DIM, "count": 5,
                         "sha256": {"reps.npy": file_sha256(out / "reps.npy"), "reps.csv": file_sha256(out / "reps.csv")}}
    assert (out / "labels.csv").read_text().splitlines()[0] == "3,aligned/Zoe/Zoe_0001.png"
    # reps.csv holds the same numbers, bit for bit, and is read when reps.npy is absent.
    (out / "reps.npy").unlink()
    np.testing.assert_array_equal(read_reps(out).embeddings, expected)
    assert sorted(p.name for p in out.iterdir()) == ["labels.csv", "meta.json", "reps.csv"]


def test_fewer_faces_than_count_leave_an_exact_npy(tmp_path):
    out = write_folder(tmp_path / "reps", sample_faces(), count=1000)
    data = np.load(out / "reps.npy")
    assert data.shape == (5, DIM) and data.dtype == np.float32
    # The header is a fixed 128 bytes, then exactly the rows written: nothing reserved for 1000.
    assert (out / "reps.npy").stat().st_size == 128 + 5 * DIM * 4
    assert json.loads((out / "meta.json").read_text())["count"] == 5


def test_names_with_commas_quotes_and_accents_round_trip(tmp_path):
    odd = ['aligned/Jr, Sam/Jr, Sam_0001.png', 'aligned/O"Neil/O"Neil_0001.png', "aligned/Zoë/Zoë_0001.png"]
    faces = [(p, p.split("/")[1], np.full(DIM, i + 1.0)) for i, p in enumerate(odd)]
    out = write_folder(tmp_path / "reps", faces)
    assert read_reps(out).paths == odd
    # Any CSV reader gets the same rows back.
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        assert [row[1] for row in csv.reader(fh)] == odd
    with open(out / "reps.csv", newline="", encoding="utf-8") as fh:
        assert [[float(v) for v in row] for row in csv.reader(fh)] == [[i + 1.0] * DIM for i in range(3)]


@pytest.mark.parametrize("name", ["aligned/P/line\nbreak.png", "aligned/P/carriage\rreturn.png", "aligned/P/tab\there.png"])
def test_names_with_control_characters_are_refused(tmp_path, name):
    with pytest.raises(UsageError, match="line break or another control character"):
        with RepsWriter(tmp_path / "reps", 2, DIM, {}) as w:
            w.add("aligned/P/P_0001.png", "P", np.ones(DIM))
            w.add(name, "P", np.ones(DIM))
    assert list((tmp_path / "reps").iterdir()) == []


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


def test_a_writer_removes_leftovers_of_dead_processes_only(tmp_path):
    out = write_folder(tmp_path / "reps", sample_faces())
    dead, alive = dead_pid(), os.getppid()
    leftovers = [out / f".reps.npy.tmp-{dead}-0a1b2c3d", out / f".labels.csv.tmp-{dead}-0a1b2c3d.people",
                 out / f".meta.json.tmp-{dead}-deadbeef"]
    live = out / f".reps.npy.tmp-{alive}-0a1b2c3d"
    for path in leftovers + [live]:
        path.write_bytes(b"half")
    write_folder(out, sample_faces())
    assert not any(p.exists() for p in leftovers)
    assert live.exists()  # another running process's file is not ours to remove


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
    np.testing.assert_array_equal(reps.embeddings, np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], np.float32))
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


def test_non_utf8_labels_are_one_sentence(tmp_path):
    out = write_folder(tmp_path / "reps", sample_faces())
    (out / "labels.csv").write_bytes(b"1,aligned/\xff\xfe/x.png\n" * 5)
    with pytest.raises(DataError, match=r"labels.csv is not UTF-8 text \(byte 10 is not valid\)"):
        read_reps(out)


@pytest.mark.parametrize("field, value, message", [
    ("aligned", 5, "aligned = 5, but aligned must be the aligned folder's path"),
    ("dimension", "128", 'dimension = "128", but dimension must be a positive whole number'),
    ("count", True, "count = true, but count must be a whole number"),
    ("flip", "yes", "flip must be true or false"),
    ("sha256", {"reps.npy": 7}, "sha256 must be an object"),
])
def test_meta_fields_of_the_wrong_type_are_one_sentence(tmp_path, field, value, message):
    out = write_folder(tmp_path / "reps", sample_faces())
    meta = json.loads((out / "meta.json").read_text())
    meta[field] = value
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message):
        read_reps(out)


def test_relative_aligned_path_resolves_against_the_reps_folder(tmp_path, monkeypatch):
    out = write_folder(tmp_path / "reps", sample_faces(), meta={"aligned": "../aligned"})
    monkeypatch.chdir(tmp_path / "reps")
    first = read_reps(out).meta["aligned"]
    monkeypatch.chdir("/")
    assert read_reps(tmp_path / "reps").meta["aligned"] == first == str((tmp_path / "aligned").resolve())


def test_a_corrupt_reps_npy_fails_its_checksum(tmp_path):
    out = write_folder(tmp_path / "reps", sample_faces())
    data = bytearray((out / "reps.npy").read_bytes())
    data[-3] ^= 0x40  # one flipped bit in the last float: a valid array with a wrong number
    (out / "reps.npy").write_bytes(bytes(data))
    with pytest.raises(DataError, match="reps.npy does not match the checksum in meta.json"):
        read_reps(out)
    # reps.csv is checked the same way when it is what gets read.
    (out / "reps.npy").unlink()
    (out / "reps.csv").write_text((out / "reps.csv").read_text().replace("1", "2", 1))
    with pytest.raises(DataError, match="reps.csv does not match the checksum"):
        read_reps(out)


def legacy_folder(tmp_path, array, meta):
    """A folder as older versions wrote it: meta.json without checksums."""
    (tmp_path / "labels.csv").write_text("".join(f"1,a/P/P_{i:04d}.png\n" for i in range(len(array))))
    np.save(tmp_path / "reps.npy", array.astype(np.float32))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path


def test_width_or_count_other_than_meta_is_refused(tmp_path):
    rows = np.random.default_rng(1).normal(size=(200, 3))
    folder = legacy_folder(tmp_path, rows, {"dimension": 128, "count": 200})
    with pytest.raises(DataError, match="reps.npy holds 3-wide rows but meta.json says the model gives 128-d"):
        read_reps(folder)
    legacy_folder(tmp_path, rows, {"dimension": 3, "count": 100})
    with pytest.raises(DataError, match="reps.npy holds 200 embeddings but meta.json says 100"):
        read_reps(folder)
    legacy_folder(tmp_path, rows, {"dimension": 3, "count": 200})
    assert read_reps(folder).embeddings.shape == (200, 3)


def test_rows_must_be_unit_length_when_meta_says_normalised(tmp_path):
    unit = np.eye(3)[[0, 1, 2, 0]]
    assert len(read_reps(legacy_folder(tmp_path, unit, {"normalised": True}))) == 4
    damaged = unit.copy()
    damaged[2] *= 1.5
    legacy_folder(tmp_path, damaged, {"normalised": True})
    with pytest.raises(DataError, match="Row 3 of .*reps.npy has length 1.5, but meta.json says the embeddings are unit"):
        read_reps(tmp_path)
    legacy_folder(tmp_path, damaged, {})  # no claim, no check (dlib's raw vectors are not unit)
    assert len(read_reps(tmp_path)) == 4
