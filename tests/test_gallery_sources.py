"""How photos and embeddings reach a gallery: align's link policy for every photo reader, no face
enrolled twice through another file of it, no file name that breaks a CSV, counts that add up.
Real LFW photos, the real detector and network; each test that takes `gallery` or `galleries` runs
on every store (a SQLite file, then PostgreSQL), the others hold no gallery."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from facenet_cli.store.registry import open_store
from tests.helpers import copy_people, error_line

PEOPLE = {"Colin_Powell": 2, "Tony_Blair": 2, "Serena_Williams": 2}


def add_json(run_cli, *args) -> dict:
    """`gallery add ... --json`, which must succeed, with counts that add up to its inputs."""
    result = run_cli("gallery", "add", *args, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert sum(report["counts"].values()) == report["inputs"] == len(report["outcomes"]), report["counts"]
    return report


def people_of(location) -> dict[str, int]:
    with open_store(location) as gallery:
        return dict(gallery.people())


@pytest.fixture(scope="module")
def known(lfw_images, tmp_path_factory) -> Path:
    return copy_people(lfw_images, tmp_path_factory.mktemp("known") / "known", PEOPLE)


@pytest.fixture(scope="module")
def enrolled(known, tmp_path_factory) -> Path:
    """The six photos enrolled once (one network run), from their own folder's parent (sources
    relative), in a SQLite file: `gallery` copies it into each store."""
    from facenet_cli.recognition.enrol import add_to_gallery

    path = tmp_path_factory.mktemp("gallery") / "people.gallery"
    cwd = os.getcwd()
    os.chdir(known.parent)
    try:
        report = add_to_gallery(path, ["known"])
    finally:
        os.chdir(cwd)
    assert report.counts()["added"] == sum(PEOPLE.values())
    return path


@pytest.fixture
def gallery(enrolled, galleries) -> str:
    """A fresh copy of the enrolled gallery, in each store in turn."""
    return galleries.copy_of(enrolled)


# ---------------------------------------------------------------- links: align's policy

def test_links_to_folders_are_skipped_as_align_skips_them(known, galleries, tmp_path, run_cli):
    """`known/Ada/more -> ../Grace` lent Grace's photos to Ada, and `Good/loop -> ../..` walked
    ~40 levels; now neither is entered, each is a `skipped` outcome (as in align's report), a link
    to a photo is read as align reads it, and a photo outside every person's folder is skipped."""
    tree = tmp_path / "known"
    shutil.copytree(known / "Colin_Powell", tree / "Ada")
    shutil.copytree(known / "Tony_Blair", tree / "Grace")
    (tree / "Good").mkdir()
    serena = sorted((known / "Serena_Williams").iterdir())
    shutil.copy(serena[0], tree / "Good" / "own.jpg")
    (tree / "Good" / "linked.jpg").symlink_to(serena[1].resolve())  # a link to a photo: read
    (tree / "Ada" / "more").symlink_to("../Grace")
    (tree / "Good" / "loop").symlink_to("../..")
    shutil.copy(serena[1], tree / "loose.jpg")
    gallery = galleries.new("g")
    report = add_json(run_cli, gallery, tree)
    assert people_of(gallery) == {"Ada": 2, "Grace": 2, "Good": 2}
    by_input = {Path(o["input"]).relative_to(tree).as_posix(): o for o in report["outcomes"]}
    assert by_input["Ada/more"]["status"] == by_input["Good/loop"]["status"] == "skipped"
    assert "link to a folder" in by_input["Ada/more"]["detail"]
    assert by_input["loose.jpg"]["status"] == "skipped" and "person's folder" in by_input["loose.jpg"]["detail"]
    assert report["counts"]["added"] == 6 and report["counts"]["skipped"] == 3 and report["inputs"] == 9
    assert len(report["outcomes"]) == len(by_input)  # one outcome per entry, none walked twice
    # The same entries are skipped by align, whose walker this is.
    aligned = run_cli("align", tree, tmp_path / "aligned", "--json")
    assert aligned.exit_code == 0, aligned.stderr
    with open(tmp_path / "aligned" / "align-report.csv", newline="") as fh:
        align_skipped = {row["input"] for row in csv.DictReader(fh) if row["status"] == "skipped"}
    assert align_skipped == {"Ada/more", "Good/loop"}
    assert {k for k, o in by_input.items() if "link to a folder" in o["detail"]} == align_skipped


def test_identify_does_not_enter_links_to_folders(gallery, known, tmp_path, run_cli):
    party = tmp_path / "party"
    party.mkdir()
    shutil.copy(sorted((known / "Tony_Blair").iterdir())[0], party / "one.jpg")
    (party / "elsewhere").symlink_to(known.resolve())  # would add six photos if followed
    (party / "loop").symlink_to("..")
    result = run_cli("identify", gallery, party, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [f["photo"] for f in data["faces"]] == ["one.jpg"] and data["faces"][0]["name"] == "Tony_Blair"
    skipped = {Path(p).name: why for p, why in data["problems"].items()}
    assert set(skipped) == {"elsewhere", "loop"} and all("link to a folder" in why for why in skipped.values())
    assert data["photos"] == 3 == data["faces_found"] + data["photos_without_face"]
    # Nothing but a link to a folder: one sentence that says why, not a walk.
    only = tmp_path / "only"
    only.mkdir()
    (only / "elsewhere").symlink_to(known.resolve())
    refused = run_cli("identify", gallery, only)
    assert refused.exit_code == 2 and "link to a folder" in error_line(refused.stderr)


def test_cluster_photos_use_the_same_policy(known, tmp_path, run_cli):
    """cluster lists photos through align itself: a link to a folder is counted as skipped."""
    photos = tmp_path / "photos"
    shutil.copytree(known / "Tony_Blair", photos / "a")
    (photos / "b").symlink_to((known / "Colin_Powell").resolve())
    result = run_cli("cluster", photos, tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["faces"] == 2 and data["photos"]["skipped"] == 1 and sum(data["photos"].values()) == 3


# ---------------------------------------------------------------- no face twice

def test_represent_output_of_photos_in_the_gallery_adds_nothing(gallery, galleries, known, tmp_path, run_cli):
    """The issue's 15 -> 30: the crops `represent --photos` made of photos already in are other
    files (other SHA-256s), but their embeddings equal the gallery's: `duplicate`, not enrolled."""
    reps = tmp_path / "reps"
    made = run_cli("represent", known, reps, "--photos", "--flip")
    assert made.exit_code == 0, made.stderr
    report = add_json(run_cli, gallery, reps)
    assert people_of(gallery) == PEOPLE
    assert report["counts"]["duplicate"] == report["inputs"] == sum(PEOPLE.values())
    assert all("equals that of face" in o["detail"] for o in report["outcomes"])
    # The same for those crops as photos (KNOWN/ layout), and once more: never doubled.
    again = add_json(run_cli, gallery, reps / "aligned")
    assert again["counts"]["duplicate"] == sum(PEOPLE.values()) and again["counts"]["added"] == 0
    assert people_of(gallery) == PEOPLE
    # A photo and (a link to) its crop in one run: the crop is the face enrolled just before.
    mixed = tmp_path / "mixed"
    shutil.copytree(known / "Colin_Powell", mixed / "Colin_Powell")
    for crop in (reps / "aligned" / "Colin_Powell").iterdir():
        (mixed / "Colin_Powell" / f"z-{crop.name}").symlink_to(crop)
    fresh_gallery = galleries.new("fresh")
    fresh = add_json(run_cli, fresh_gallery, mixed)
    assert fresh["counts"]["added"] == fresh["counts"]["duplicate"] == 2
    assert people_of(fresh_gallery) == {"Colin_Powell": 2}


def test_export_added_back_from_another_directory_adds_nothing(gallery, galleries, tmp_path, run_cli, monkeypatch):
    """The issue's 205 -> 410: the export's paths are relative to the directory the photos were
    added from; from anywhere else its rows were keyed by the vector's digest and enrolled again."""
    exported = run_cli("gallery", "export", gallery, tmp_path / "export")
    assert exported.exit_code == 0, exported.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = add_json(run_cli, gallery, tmp_path / "export")
    assert people_of(gallery) == PEOPLE
    assert report["counts"]["already-in"] == report["inputs"] == sum(PEOPLE.values())
    # An export without the recorded image hashes (OpenFace's own files, an older facenet): no
    # image can be found, so each row is an unverifiable duplicate of the face it equals.
    meta = json.loads((tmp_path / "export" / "meta.json").read_text())
    meta.pop("image_sha256")
    (tmp_path / "export" / "meta.json").write_text(json.dumps(meta))
    report = add_json(run_cli, gallery, tmp_path / "export")
    assert report["counts"]["duplicate"] == report["inputs"] == sum(PEOPLE.values())
    assert all("unverifiable duplicate" in o["detail"] for o in report["outcomes"])
    assert people_of(gallery) == PEOPLE
    # A new gallery made from it holds every face once.
    fresh_gallery = galleries.new("fresh")
    fresh = add_json(run_cli, fresh_gallery, tmp_path / "export")
    assert fresh["counts"]["added"] == sum(PEOPLE.values()) and people_of(fresh_gallery) == PEOPLE


def test_reps_rows_are_keyed_by_their_image_found_from_the_reps_folder(known, galleries, tmp_path, run_cli,
                                                                       monkeypatch):
    """A represent output read from another directory: its relative paths are found under the
    folder its meta.json records, so each row is keyed by its crop's SHA-256 (not the vector's
    digest) and those crops added later are the same images."""
    from facenet_cli.models.hub import file_sha256

    work = tmp_path / "work"
    shutil.copytree(known, work / "known")
    monkeypatch.chdir(work)
    made = run_cli("represent", "known", "reps", "--photos", "--flip")
    assert made.exit_code == 0, made.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    gallery = galleries.new("g")
    assert add_json(run_cli, gallery, work / "reps")["counts"]["added"] == sum(PEOPLE.values())
    crops = {file_sha256(p) for p in (work / "reps" / "aligned").glob("*/*.png")}
    with open_store(gallery) as opened:
        assert {f.image_sha256 for f in opened.faces()} == crops
    report = add_json(run_cli, gallery, work / "reps" / "aligned")
    assert report["counts"]["already-in"] == sum(PEOPLE.values())


# ---------------------------------------------------------------- names no CSV can carry

def test_a_file_name_with_a_line_break_is_refused_at_enrolment(known, galleries, tmp_path, run_cli):
    tree = tmp_path / "known"
    shutil.copytree(known / "Colin_Powell", tree / "Colin_Powell")
    photo = sorted((known / "Tony_Blair").iterdir())[0]
    shutil.copy(photo, tree / "Colin_Powell" / "two\nlines.jpg")
    gallery = galleries.new("g")
    report = add_json(run_cli, gallery, tree)
    refused = [o for o in report["outcomes"] if o["status"] == "bad-name"]
    assert len(refused) == 1 and refused[0]["input"].endswith("two\\nlines.jpg")
    assert "control character" in refused[0]["detail"]
    assert report["counts"]["added"] == 2 and people_of(gallery) == {"Colin_Powell": 2}
    # Named directly with --name, the same.
    shutil.copy(photo, tmp_path / "tab\there.jpg")
    direct = add_json(run_cli, gallery, "--name", "Tony_Blair", tmp_path / "tab\there.jpg", photo)
    assert [o["status"] for o in direct["outcomes"]] == ["bad-name", "added"]
    # In a represent output's labels.csv (a quoted line break), the same.
    exported = run_cli("gallery", "export", gallery, tmp_path / "reps")
    assert exported.exit_code == 0, exported.stderr
    labels = tmp_path / "reps" / "labels.csv"
    rows = list(csv.reader(io.StringIO(labels.read_text())))
    rows[0][1] = rows[0][1].replace(".jpg", "\r\n.jpg")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    labels.write_text(buf.getvalue())
    meta = json.loads((tmp_path / "reps" / "meta.json").read_text())
    meta.pop("image_sha256")
    (tmp_path / "reps" / "meta.json").write_text(json.dumps(meta))
    fresh = add_json(run_cli, galleries.new("fresh"), tmp_path / "reps")
    assert [o["status"] for o in fresh["outcomes"]] == ["bad-name"] + ["added"] * (len(rows) - 1)
    assert "\n" not in fresh["outcomes"][0]["input"] and "\r" not in fresh["outcomes"][0]["input"]


def test_export_writes_a_gallery_holding_an_odd_source(gallery, tmp_path, run_cli, monkeypatch):
    """A gallery enrolled before such names were refused holds a source with a line break; export
    refused the whole gallery. Now that row's path carries U+FFFD in place of the control
    character (the face keeps its person and image), and the export adds back as the same faces."""
    with open_store(gallery) as opened:
        vector = opened.enrolment().embeddings[0] * -1  # a face of its own
        opened.add_face("Tony_Blair", vector, "known/Tony_Blair/odd\nname\x1b.jpg", "ab" * 32)
        faces = len(opened)
    exported = run_cli("gallery", "export", gallery, tmp_path / "export", "--json")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["faces"] == faces
    from facenet_cli.formats.reps import read_reps

    reps = read_reps(tmp_path / "export")
    assert "known/Tony_Blair/odd\ufffdname\ufffd.jpg" in reps.paths and reps.people.count("Tony_Blair") == 3
    monkeypatch.chdir(tmp_path)
    report = add_json(run_cli, gallery, tmp_path / "export")
    assert report["counts"]["already-in"] == faces
    with open_store(gallery) as opened:
        assert len(opened) == faces
