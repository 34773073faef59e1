"""The gallery: real LFW faces enrolled, round trips, refusals, two writers at once. Each test that
takes `enrolled`, `galleries` or `gallery_location` runs on every store (a SQLite file, then
PostgreSQL: tests/gallery_stores.py); the rest is about the SQLite file itself, or about reading
photos (no store in it)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import unicodedata
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from facenet_cli.errors import FacenetError
from facenet_cli.pipeline.face_pipeline import PipelineOptions
from facenet_cli.store.registry import open_store
from tests.helpers import copy_people

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = {"Colin_Powell": 3, "Tony_Blair": 3, "Serena_Williams": 2}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def known(lfw_images, tmp_path_factory) -> Path:
    return copy_people(lfw_images, tmp_path_factory.mktemp("known") / "known", PEOPLE)


@pytest.fixture(scope="module")
def enrolled(known, module_galleries, run_cli_module):
    """A gallery of the three people, made once per store through the CLI."""
    path = module_galleries.new("people")
    result = run_cli_module("gallery", "add", path, known, "--json")
    assert result.exit_code == 0, result.stderr
    return path, json.loads(result.stdout)


@pytest.fixture(scope="module")
def run_cli_module():
    from typer.testing import CliRunner

    from facenet_cli.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_add_known_folder_enrols_one_face_per_photo(enrolled):
    path, report = enrolled
    assert report["inputs"] == sum(PEOPLE.values())
    assert report["counts"]["added"] == sum(PEOPLE.values())
    assert sum(report["counts"].values()) == report["inputs"]
    with open_store(path) as gallery:
        assert dict(gallery.people()) == PEOPLE
        model = gallery.model
        assert model.name == "dlib-resnet.v1" and model.flip and model.dim == 128
        enrolment = gallery.enrolment()
        faces = gallery.faces()
    # Unit vectors, each face's box inside its 250x250 LFW photo.
    assert np.allclose(np.linalg.norm(enrolment.embeddings, axis=1), 1.0, atol=1e-5)
    assert all(0 <= f.box[0] < f.box[2] <= 250 and 0 <= f.box[1] < f.box[3] <= 250 for f in faces)
    # Two photos of one person are nearer each other than photos of two people.
    e, names = enrolment.embeddings, [enrolment.names[i] for i in enrolment.person_index]
    same = [np.sum((e[i] - e[j]) ** 2) for i in range(len(e)) for j in range(i) if names[i] == names[j]]
    other = [np.sum((e[i] - e[j]) ** 2) for i in range(len(e)) for j in range(i) if names[i] != names[j]]
    assert max(same) < min(other)


def test_adding_again_embeds_nothing_and_refuses_the_same_image(enrolled, known, galleries, tmp_path, run_cli,
                                                                monkeypatch):
    copy = galleries.copy_of(enrolled[0])
    # The same image under another person's name and file name is still the same image.
    (tmp_path / "again" / "Someone_Else").mkdir(parents=True)
    shutil.copy(next((known / "Tony_Blair").iterdir()), tmp_path / "again" / "Someone_Else" / "renamed.jpg")
    from facenet_cli.nets import embedder as embed

    calls = []
    original = embed.Embedder.embed
    monkeypatch.setattr(embed.Embedder, "embed", lambda self, images, raw=False: calls.append(len(images)) or
                        original(self, images, raw))
    result = run_cli("gallery", "add", copy, known, tmp_path / "again", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"]["already-in"] == sum(PEOPLE.values()) + 1 and report["counts"]["added"] == 0
    assert calls == []  # nothing was embedded again
    assert galleries.people(copy) == PEOPLE


def test_list_json_and_table(enrolled, run_cli):
    path, _ = enrolled
    listed = run_cli("gallery", "list", path, "--json", "--with-faces")
    assert listed.exit_code == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert {p["name"]: p["faces"] for p in data["people"]} == PEOPLE
    assert data["total_faces"] == len(data["faces"]) == sum(PEOPLE.values())
    table = run_cli("gallery", "list", path)
    assert table.exit_code == 0 and "Serena_Williams" in table.stdout and "3 people, 8 faces" in table.stdout


def test_remove_move_and_export_round_trip(enrolled, galleries, tmp_path, run_cli):
    path = galleries.copy_of(enrolled[0], "edit")
    with open_store(path) as gallery:
        blair_face = gallery.faces("Tony_Blair")[0].id
        before = gallery.enrolment()
    moved = run_cli("gallery", "move", path, blair_face, "Zoe\u0308 Blair", "--json")  # NFD in, NFC stored
    assert moved.exit_code == 0, moved.stderr
    assert json.loads(moved.stdout) == {"face_id": blair_face, "from": "Tony_Blair", "to": "Zo\u00eb Blair"}
    removed = run_cli("gallery", "remove", path, "Serena_Williams", "--json")
    assert removed.exit_code == 0 and json.loads(removed.stdout)["removed_faces"] == 2
    with open_store(path) as gallery:
        assert dict(gallery.people()) == {"Colin_Powell": 3, "Tony_Blair": 2, "Zo\u00eb Blair": 1}
        after = gallery.enrolment()
    # Nothing else changed: every remaining face keeps its embedding bit for bit.
    old = {int(i): v for i, v in zip(before.face_ids, before.embeddings)}
    assert all(np.array_equal(old[int(i)], v) for i, v in zip(after.face_ids, after.embeddings))

    exported = run_cli("gallery", "export", path, tmp_path / "reps")
    assert exported.exit_code == 0, exported.stderr
    from facenet_cli.formats.reps import read_reps

    reps = read_reps(tmp_path / "reps")
    assert sorted(set(reps.people)) == ["Colin_Powell", "Tony_Blair", "Zo\u00eb Blair"]
    assert (tmp_path / "reps" / "reps.csv").read_text().count("\n") == 6
    # ... and a gallery made from the export holds the same people and the same vectors.
    back_location = galleries.new("back")
    back = run_cli("gallery", "add", back_location, tmp_path / "reps", "--json")
    assert back.exit_code == 0, back.stderr
    assert json.loads(back.stdout)["counts"]["added"] == 6
    with open_store(back_location) as gallery:
        assert dict(gallery.people()) == {"Colin_Powell": 3, "Tony_Blair": 2, "Zo\u00eb Blair": 1}
        again = gallery.enrolment()
        assert gallery.model.flip
    key = lambda e: sorted(map(bytes, (v.tobytes() for v in e.embeddings)))  # noqa: E731
    assert key(again) == key(after)
    # Removing a single face by id, then a face id that is not there.
    gone = run_cli("gallery", "remove", path, str(blair_face), "--json")
    assert gone.exit_code == 0 and json.loads(gone.stdout)["person"] == "Zo\u00eb Blair"
    missing = run_cli("gallery", "remove", path, str(blair_face))
    assert missing.exit_code == 2 and f"No face with id {blair_face}" in error_line(missing.stderr)


@pytest.mark.parametrize("name, fragment", [
    ("a/b", "slash"), ("..", "'..'"), ("x\ny", "control character"), ("  ", "empty"), ("Unknown", "unknown"),
])
def test_bad_names_are_refused_with_one_sentence(known, galleries, run_cli, name, fragment):
    photo = next((known / "Colin_Powell").iterdir())
    location = galleries.new("g")
    result = run_cli("gallery", "add", location, "--name", name, photo)
    assert result.exit_code == 2
    assert fragment in error_line(result.stderr)
    assert galleries.holds_nothing(location)  # refused before any face was enrolled


def test_photo_outcomes_no_face_several_faces_unreadable(examples_dir, known, lfw_images, galleries, tmp_path,
                                                         run_cli):
    from PIL import Image

    folder = tmp_path / "known"
    (folder / "Eva_Longoria").mkdir(parents=True)
    (folder / "Nobody").mkdir()
    (folder / "unknown").mkdir()  # cluster's "unknown" group must not become a person
    shutil.copy(examples_dir / "longoria-cooper.jpg", folder / "Eva_Longoria" / "pair.jpg")
    shutil.copy(examples_dir / "adams.jpg", folder / "unknown" / "adams.jpg")
    # A real photo's background, scaled up: no face in it.
    with Image.open(lfw_images / "Colin_Powell" / "Colin_Powell_0001.jpg") as image:
        image.crop((0, 0, 60, 60)).resize((240, 240)).save(folder / "Nobody" / "wall.jpg")
    (folder / "Nobody" / "broken.jpg").write_bytes(b"not a jpeg at all")
    gallery = galleries.new("g")
    result = run_cli("gallery", "add", gallery, folder, "--json")
    assert result.exit_code == 3, result.stdout  # nothing could be added at all: "nothing found"
    report = json.loads(result.stdout)
    status = {Path(o["input"]).name: o["status"] for o in report["outcomes"]}
    assert status == {"pair.jpg": "multiple-faces", "wall.jpg": "no-face", "broken.jpg": "unreadable",
                      "adams.jpg": "bad-name"}
    assert "none enrolled" in next(o["detail"] for o in report["outcomes"] if o["status"] == "multiple-faces")
    assert "nothing could be added" in result.stderr.lower() or "No face could be added" in result.stderr
    # With --faces largest, one of the two faces is enrolled.
    largest = run_cli("gallery", "add", gallery, "--name", "Eva_Longoria", folder / "Eva_Longoria" / "pair.jpg",
                      "--faces", "largest", "--json")
    assert largest.exit_code == 0 and json.loads(largest.stdout)["counts"]["added"] == 1


def test_refuses_another_model_or_flip_setting(enrolled, galleries, tmp_path, run_cli, known):
    copy = galleries.copy_of(enrolled[0], "g")
    photo = next((known / "Colin_Powell").iterdir())
    no_flip = run_cli("gallery", "add", copy, "--name", "X", photo, "--no-flip")
    assert no_flip.exit_code == 1 and "--flip" in error_line(no_flip.stderr)
    # A represent output of another model (OpenFace's alignment and weights) is refused.
    run_cli("gallery", "export", copy, tmp_path / "reps")
    meta = json.loads((tmp_path / "reps" / "meta.json").read_text())
    from facenet_cli.align.specs import get_spec

    meta["model"] = dict(meta["model"], name="nn4.small2.v1", align=get_spec("outerEyesAndNose").to_dict(),
                         weights={"filename": "nn4.small2.v1.t7", "sha256": "0" * 64})
    (tmp_path / "reps" / "meta.json").write_text(json.dumps(meta))
    other = run_cli("gallery", "add", galleries.new("fresh"), tmp_path / "reps")
    assert other.exit_code == 0  # a new gallery takes that model...
    into = run_cli("gallery", "add", copy, tmp_path / "reps")
    assert into.exit_code == 1 and "outerEyesAndNose" in error_line(into.stderr)  # ...this one refuses it
    assert galleries.people(copy) == PEOPLE  # nothing lost


def test_a_corrupt_file_is_one_sentence(tmp_path, run_cli):
    """SQLite only: a damaged file."""
    garbage = tmp_path / "garbage.gallery"
    garbage.write_bytes(os.urandom(4096))
    result = run_cli("gallery", "list", garbage)
    assert result.exit_code == 1 and "not a readable gallery" in error_line(result.stderr)


@contextmanager
def another_writer(location: str):
    """Another program in the middle of a write to the gallery: SQLite's write lock on the file,
    or PostgreSQL's write turn (the gallery's generation row, locked)."""
    if "://" not in location:
        holder = sqlite3.connect(location, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    else:
        import psycopg

        base, schema = location.rsplit("gallery=", 1)
        holder = psycopg.connect(base.rstrip("?&"), autocommit=True)
        holder.execute("BEGIN")
        holder.execute(f"SELECT value FROM {schema}.info WHERE key = 'generation' FOR UPDATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_foreign_missing_and_locked_galleries_are_one_sentence(enrolled, galleries, tmp_path, run_cli):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(os.urandom(4096))
    foreign = galleries.foreign()
    result = run_cli("gallery", "add", foreign, "--name", "X", garbage)
    assert result.exit_code == 1 and "not a facenet gallery" in error_line(result.stderr)
    missing = run_cli("gallery", "list", galleries.new("nope"))
    assert missing.exit_code == 2 and "No gallery at" in error_line(missing.stderr)

    locked = galleries.copy_of(enrolled[0], "locked")
    with another_writer(locked):
        with open_store(locked, timeout=0.2) as gallery:
            with pytest.raises(FacenetError, match="locked by another program"):
                gallery.remove_person("Colin_Powell")
            assert dict(gallery.people()) == PEOPLE  # reading is not held up
    assert galleries.people(locked) == PEOPLE


@pytest.mark.slow  # two real `gallery add` processes
def test_two_processes_adding_at_once_both_land(known, gallery_location):
    """Two `facenet gallery add` runs on one new gallery at the same moment, one person each,
    plus one photo that both add: every face lands once."""
    gallery = gallery_location
    shared = next((known / "Colin_Powell").iterdir())
    runs = []
    for person in ("Tony_Blair", "Serena_Williams"):
        photos = sorted((known / person).iterdir())
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "facenet_cli", "gallery", "add", str(gallery), "--name", person, *map(str, photos),
             "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    runs.append(subprocess.Popen(
        [sys.executable, "-m", "facenet_cli", "gallery", "add", str(gallery), "--name", "Colin_Powell", str(shared),
         "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err for _, err in outputs]
    with open_store(gallery) as g:
        assert dict(g.people()) == {"Tony_Blair": 3, "Serena_Williams": 2, "Colin_Powell": 1}
        assert len({f.image_sha256 for f in g.faces()}) == 6


def test_python_api_names(enrolled):
    from facenet_cli import open_store
    from facenet_cli.store.names import name_problem, normalise_name

    assert normalise_name("Jose\u0301") == unicodedata.normalize("NFC", "Jos\u00e9")
    assert name_problem("Ren\u00e9e O'Hara-Smith") is None
    with open_store(enrolled[0]) as gallery:
        assert len(gallery) == sum(PEOPLE.values())


@pytest.mark.slow  # real processes interrupted or killed
def test_killed_add_keeps_what_landed_and_a_rerun_finishes(lfw_images, galleries, tmp_path):
    """kill -9 in the middle of `gallery add`: the gallery stays readable with every face that
    landed, and the same command run again adds the rest without embedding those again. Faces
    land a batch at a time (one transaction each): batches of 2 here, so the kill comes between.
    40 photos in one process, fp32: a run long enough (seconds) on any CPU to be caught midway."""
    import signal
    import time

    people = {"Colin_Powell": 10, "Tony_Blair": 10, "George_W_Bush": 10, "Gerhard_Schroeder": 10}
    known = copy_people(lfw_images, tmp_path / "known", people)
    gallery = galleries.new("killed")
    command = [sys.executable, "-m", "facenet_cli", "gallery", "add", str(gallery), str(known), "--json",
               "--batch-size", "2", "--workers", "1", "--precision", "fp32"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    landed = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.poll() is None:
        try:
            with open_store(gallery, timeout=5) as watched:
                landed = len(watched)
        except FacenetError:
            landed = 0  # not made yet, or its schema is being made
        if landed >= 2:
            break
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert 2 <= landed < sum(people.values()), "the run was not caught in the middle"
    if galleries.is_sqlite:  # the file itself: sound, and still in WAL mode
        with sqlite3.connect(gallery) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with open_store(gallery) as g:
        before = len(g)
    assert before >= landed
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)["counts"]
    assert counts["already-in"] == before and counts["added"] == sum(people.values()) - before
    assert galleries.people(gallery) == people


@pytest.fixture(scope="module")
def aligned_links_reps(known, tmp_path_factory, run_cli_module):
    """`facenet align` output of the people, a folder of links to its crops, and their `represent
    --flip` output: made once for every store."""
    root = tmp_path_factory.mktemp("crops")
    aligned, links, reps = root / "aligned", root / "links", root / "reps"
    assert run_cli_module("align", known, aligned).exit_code == 0
    for crop in sorted(aligned.glob("*/*.png")):
        (links / crop.parent.name).mkdir(parents=True, exist_ok=True)
        (links / crop.parent.name / crop.name).symlink_to(crop.resolve())
    assert run_cli_module("represent", aligned, reps, "--flip").exit_code == 0
    return aligned, links, reps


def test_aligned_crops_and_links_to_them_are_enrolled_as_they_are(aligned_links_reps, galleries, run_cli):
    """`facenet align` output (or `cluster --link` folders of symlinks to it) is not detected again:
    each crop is embedded as it is, so its vector equals represent's (with the gallery's flip)."""
    aligned, links, reps = aligned_links_reps
    for source in (aligned, links):
        gallery = galleries.new(source.name)
        result = run_cli("gallery", "add", gallery, source, "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["counts"]["added"] == report["inputs"] == sum(PEOPLE.values())
        from facenet_cli.formats.reps import read_reps

        expected = read_reps(reps)
        by_name = {Path(p).name: v for p, v in zip(expected.paths, expected.embeddings)}
        with open_store(gallery) as opened:
            faces = opened.faces()
            enrolment = opened.enrolment()
        assert all(f.box == (0, 0, 150, 150) for f in faces)  # the whole crop, no detection
        vectors = {Path(f.source).name: enrolment.embeddings[i] for i, f in enumerate(faces)}
        assert set(vectors) == set(by_name)
        assert max(float(np.abs(vectors[n] - by_name[n]).max()) for n in by_name) < 1e-5


def test_a_pipe_named_like_a_photo_is_an_outcome_not_a_hang(known, galleries, tmp_path, run_cli):
    folder = tmp_path / "known"
    shutil.copytree(known / "Colin_Powell", folder / "Colin_Powell")
    os.mkfifo(folder / "Colin_Powell" / "pipe.jpg")
    result = run_cli("gallery", "add", galleries.new("g"), folder, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    pipe = [o for o in report["outcomes"] if o["input"].endswith("pipe.jpg")]
    assert [o["status"] for o in pipe] == ["unreadable"] and report["counts"]["added"] == report["inputs"] - 1


def test_photos_are_embedded_in_batches_equal_to_one_at_a_time(known, galleries, tmp_path, monkeypatch):
    """`gallery add` embeds --batch-size faces per network call and enrols each batch in one
    transaction; the faces equal those of a one-at-a-time run, outcomes stay in input order, and
    the same image twice in one batch is embedded once."""
    from facenet_cli.nets.embedder import Embedder
    from facenet_cli.recognition.enrol import add_to_gallery, plan_known_folder

    folder = tmp_path / "known"
    shutil.copytree(known, folder)
    last = sorted((folder / "Tony_Blair").iterdir())[-1]
    shutil.copy(last, folder / "Tony_Blair" / "Tony_Blair_copy.jpg")  # same bytes, listed next: same batch
    calls = []
    real_embed = Embedder.embed
    monkeypatch.setattr(Embedder, "embed", lambda self, images, raw=False: calls.append(len(images))
                        or real_embed(self, images, raw))
    batched, one_at_a_time = galleries.new("batched"), galleries.new("single")
    report = add_to_gallery(batched, [folder], pipeline=PipelineOptions(batch_size=3))
    batched_calls, calls[:] = list(calls), []
    single = add_to_gallery(one_at_a_time, [folder], pipeline=PipelineOptions(batch_size=1))
    photos = sum(PEOPLE.values())
    assert batched_calls == [3] * (photos // 3) + ([photos % 3] if photos % 3 else [])
    assert calls == [1] * photos
    assert [o.input for o in report.outcomes] == [path for _, path in plan_known_folder(folder)]
    assert report.counts()["added"] == photos and report.counts()["already-in"] == 1
    copy = next(o for o in report.outcomes if o.status == "already-in")
    assert copy.input == str(folder / "Tony_Blair" / "Tony_Blair_copy.jpg")  # listed after the original
    assert single.counts() == report.counts()
    def by_source(path):
        with open_store(path) as gallery:
            enrolment, faces = gallery.enrolment(), {f.id: f.source for f in gallery.faces()}
        return {faces[int(i)]: v for i, v in zip(enrolment.face_ids, enrolment.embeddings)}

    mine, theirs = by_source(batched), by_source(one_at_a_time)
    assert mine.keys() == theirs.keys() and len(mine) == photos
    for source, vector in mine.items():
        assert np.allclose(vector, theirs[source], atol=1e-5), source


def test_workers_find_the_faces_and_the_gallery_is_the_same(enrolled, known, galleries, run_cli):
    """`gallery add --workers 2` (faces found and aligned in two forked processes, through the
    local executor) enrols what the one-process run enrolled, in the same order, with the same
    embeddings and outcomes; an unknown executor is one sentence."""
    path, report = enrolled
    two = galleries.new("two")
    (known / "Nobody").mkdir(exist_ok=True)
    (known / "Nobody" / "broken.jpg").write_bytes(b"not a jpeg")
    try:
        result = run_cli("gallery", "add", two, known, "--workers", "2", "--executor", "local", "--json")
    finally:
        shutil.rmtree(known / "Nobody")
    assert result.exit_code == 0, result.stderr
    parallel = json.loads(result.stdout)
    assert parallel["counts"]["added"] == report["counts"]["added"] and parallel["counts"]["unreadable"] == 1
    with open_store(path) as one_process, open_store(two) as two_processes:
        a, b = one_process.enrolment(), two_processes.enrolment()
        assert [(f.person, f.source, f.box) for f in one_process.faces()] == \
            [(f.person, f.source, f.box) for f in two_processes.faces()]
    assert a.names == b.names and np.allclose(a.embeddings, b.embeddings, atol=1e-5)
    refused = run_cli("gallery", "add", galleries.new("x"), known, "--executor", "nowhere")
    assert refused.exit_code == 2 and "--executor" in refused.stderr
