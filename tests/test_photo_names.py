"""Outputs name photos by their path relative to the folder given, never by file name alone
(issue 19, item 5): two people's photos called `x.jpg` stay apart in identify, search and
cluster; a photo named directly keeps its path as given; a link loop gives each photo once."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import copy_people

PEOPLE = ("Tony_Blair", "Colin_Powell")


@pytest.fixture(scope="module")
def tree(lfw_images, tmp_path_factory):
    """known/<person>/ (three photos each, enrolled) and val/ben/x.jpg, val/ada/x.jpg: a fourth
    photo of each person under the same file name, plus a photo without a face in val/ben."""
    from PIL import Image

    root = tmp_path_factory.mktemp("names")
    copy_people(lfw_images, root / "all", {p: 4 for p in PEOPLE})
    for person, who in zip(PEOPLE, ("ben", "ada")):
        files = sorted((root / "all" / person).iterdir())
        (root / "known" / person).mkdir(parents=True)
        for f in files[:3]:
            shutil.copy(f, root / "known" / person / f.name)
        (root / "val" / who).mkdir(parents=True)
        shutil.copy(files[3], root / "val" / who / "x.jpg")
    Image.new("RGB", (200, 200), (90, 140, 200)).save(root / "val" / "ben" / "sky.png")
    return root


@pytest.fixture(scope="module")
def gallery(tree):
    from facenet_cli.recognition.enrol import add_to_gallery

    path = tree / "people.gallery"
    assert add_to_gallery(path, [tree / "known"]).counts()["added"] == 3 * len(PEOPLE)
    return path


def _json(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_identify_names_photos_relative_to_the_folder_given(run_cli, gallery, tree):
    data = _json(run_cli("identify", gallery, tree / "val", "--json"))
    assert {f["photo"]: f["name"] for f in data["faces"]} == {"ben/x.jpg": "Tony_Blair", "ada/x.jpg": "Colin_Powell"}
    assert set(data["problems"]) == {"ben/sky.png"}

    done = run_cli("identify", gallery, tree / "val", "--csv")
    assert done.exit_code == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["photo"]: r["name"] for r in rows if r["face"] != ""} == {"ben/x.jpg": "Tony_Blair",
                                                                        "ada/x.jpg": "Colin_Powell"}
    assert [r["photo"] for r in rows if r["face"] == ""] == ["ben/sky.png"]

    table = run_cli("identify", gallery, tree / "val")
    assert table.exit_code == 0, table.stderr
    assert "ben/x.jpg" in table.stdout and "ada/x.jpg" in table.stdout


def test_identify_keeps_paths_as_given_when_relative_names_would_coincide(run_cli, gallery, tree):
    # Two folders given, each holding x.jpg: their relative names would be the same, so every
    # photo is named by its path as given; a photo named directly always is.
    ben, ada = tree / "val" / "ben", tree / "val" / "ada"
    data = _json(run_cli("identify", gallery, ben, ada, "--json"))
    assert {f["photo"]: f["name"] for f in data["faces"]} == {str(ben / "x.jpg"): "Tony_Blair",
                                                              str(ada / "x.jpg"): "Colin_Powell"}
    assert set(data["problems"]) == {str(ben / "sky.png")}
    data = _json(run_cli("identify", gallery, ada / "x.jpg", "--json"))
    assert [f["photo"] for f in data["faces"]] == [str(ada / "x.jpg")]


def test_search_names_the_photo_as_given(run_cli, gallery, tree):
    found = {}
    for who in ("ben", "ada"):
        photo = tree / "val" / who / "x.jpg"
        data = _json(run_cli("search", gallery, photo, "--json", "--top", "1"))
        assert data["photo"] == str(photo)
        found[data["photo"]] = data["faces"][0]["matches"][0]["person"]
    assert found == {str(tree / "val" / "ben" / "x.jpg"): "Tony_Blair",
                     str(tree / "val" / "ada" / "x.jpg"): "Colin_Powell"}


def test_cluster_names_photos_relative_to_source(run_cli, tree, tmp_path):
    from facenet_cli.recognition.cluster import CLUSTERS_FILE, SUMMARY_FILE, read_clusters_csv

    out = tmp_path / "out"
    summary = _json(run_cli("cluster", tree / "val", out, "--json", "--device", "cpu"))
    rows = read_clusters_csv(out / CLUSTERS_FILE)
    assert sorted((r["path"], r["face"]) for r in rows) == [("ada/x.jpg", "0"), ("ben/x.jpg", "0")]
    assert all(Path(r["crop"]).is_file() for r in rows)  # the crop column stays a path to open
    assert summary["no_face"] == ["ben/sky.png"]
    assert json.loads((out / SUMMARY_FILE).read_text())["no_face"] == ["ben/sky.png"]
    # A threshold that merges everyone: the table's one cluster lists both photos.
    table = run_cli("cluster", tree / "val", tmp_path / "again", "--device", "cpu", "--max-distance", "4")
    assert table.exit_code == 0, table.stderr
    assert "ada/x.jpg, ben/x.jpg" in table.stdout
    assert "no face in ben/sky.png" in table.stderr


def test_a_link_loop_gives_each_photo_once(run_cli, gallery, examples_dir, tmp_path):
    # One photo of two faces, and p/up -> .. (a link to a folder: never entered).
    p = tmp_path / "p"
    p.mkdir()
    shutil.copy(examples_dir / "longoria-cooper.jpg", p / "one.jpg")
    (p / "up").symlink_to("..")
    data = _json(run_cli("identify", gallery, p, "--json"))
    assert [(f["photo"], f["face"]) for f in data["faces"]] == [("one.jpg", 0), ("one.jpg", 1)]
    assert list(data["problems"]) == ["up"] and "link to a folder" in data["problems"]["up"]

    from facenet_cli.recognition.cluster import CLUSTERS_FILE, read_clusters_csv

    out = tmp_path / "out"
    summary = _json(run_cli("cluster", p, out, "--json", "--device", "cpu"))
    assert summary["faces"] == 2
    rows = read_clusters_csv(out / CLUSTERS_FILE)
    assert sorted((r["path"], r["face"]) for r in rows) == [("one.jpg", "0"), ("one.jpg", "1")]
