"""`facenet cluster` and `cluster_faces` on real LFW faces, embedded once per test session."""
from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from facenet_cli.recognition.cluster import (CLUSTERS_FILE, SHEET_FILE, SUMMARY_FILE, average_linkage, block_rows_for,
                                 cluster_embeddings, cluster_faces, knn_graph, label_clusters, pairwise_f,
                                 read_clusters_csv)

# Five people with many photos and six with one each (the loners must end in `unknown`).
PEOPLE = {"Colin_Powell": 8, "Gloria_Macapagal_Arroyo": 8, "Jean_Chretien": 8, "Serena_Williams": 8,
          "Vladimir_Putin": 8}
LONERS = ["Aaron_Eckhart", "Abba_Eban", "Adam_Rich", "Adrian_Nastase", "Ahmed_Chalabi", "Alan_Dershowitz"]


@pytest.fixture(scope="session")
def lfw_reps(lfw_images, tmp_path_factory):
    """A `facenet represent` folder of 46 real LFW faces (the View 2 alignment, --flip)."""
    from facenet_cli import AlignJob, Embedder, align_tree, represent_tree, resolve_model
    from tests.helpers import copy_people

    root = tmp_path_factory.mktemp("cluster-lfw")
    raw = copy_people(lfw_images, root / "raw", {**PEOPLE, **{name: 1 for name in LONERS}})
    record = resolve_model("dlib-resnet.v1")
    align_tree(raw, root / "aligned", AlignJob(record.align, detector="hog+cnn", faces="center-only",
                                               fallback="center"))
    represent_tree(root / "aligned", root / "reps", Embedder(record, device="cpu", flip=True))
    return root / "reps"


@pytest.fixture(scope="session")
def reps_data(lfw_reps):
    from facenet_cli import read_reps

    return read_reps(lfw_reps)


def _rows(out: Path) -> list[dict]:
    return read_clusters_csv(out / CLUSTERS_FILE)


def test_real_people_cluster_at_the_calibrated_threshold(lfw_reps, reps_data, tmp_path):
    report = cluster_faces(lfw_reps, tmp_path / "out")
    people = np.array(reps_data.people)
    score = pairwise_f(people, report.labels)
    # Measured F 1.0 here (at 0.12 to 0.15 alike); LFW-wide figures: benchmarks/cluster_lfw.py.
    assert score.precision >= 0.95 and score.recall >= 0.9 and score.f >= 0.95, score
    assert 5 <= len(report.sizes) <= 7
    loner = np.isin(people, LONERS)
    assert (report.labels[loner] == -1).sum() >= len(LONERS) - 1  # people seen once match no one
    rows = _rows(tmp_path / "out")
    assert len(rows) == len(people)
    assert sum(r["cluster"] == "unknown" for r in rows if Path(r["path"]).parent.name in LONERS) >= len(LONERS) - 1
    assert report.threshold_source.startswith("dlib-resnet.v1 operating point")


def test_each_person_lands_mostly_in_one_cluster(reps_data):
    from facenet_cli.models.catalogue import DLIB_CLUSTER_POINTS

    labels = cluster_embeddings(reps_data.embeddings, DLIB_CLUSTER_POINTS["threshold"])
    people = np.array(reps_data.people)
    for person in PEOPLE:
        mine = labels[people == person]
        top = np.bincount(mine[mine >= 0]).max() if (mine >= 0).any() else 0
        assert top >= 6, f"{person}: {mine}"


def test_a_face_that_matches_no_one_is_unknown(reps_data, tmp_path):
    people = np.array(reps_data.people)
    two = np.flatnonzero(np.isin(people, ["Colin_Powell", "Serena_Williams"]))
    loner = int(np.flatnonzero(people == "Aaron_Eckhart")[0])
    rows = np.append(two, loner)
    labels = cluster_embeddings(reps_data.embeddings[rows], 0.12)
    assert labels[-1] == -1
    assert pairwise_f(people[rows], labels).f > 0.9
    # Nothing merges at a threshold below every distance: all faces are unknown.
    assert (cluster_embeddings(reps_data.embeddings[rows], 1e-4) == -1).all()


def test_average_linkage_over_the_graph_equals_full_average_linkage(reps_data):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    x = reps_data.embeddings.astype(np.float64)
    full = linkage(pdist(x, "sqeuclidean"), "average")
    for threshold in (0.08, 0.12, 0.2, 0.3):
        ours = average_linkage(x, knn_graph(x, k=len(x), max_distance=threshold), threshold)
        theirs = fcluster(full, threshold, "distance")
        pairs_ours = ours[:, None] == ours[None, :]
        pairs_theirs = theirs[:, None] == theirs[None, :]
        assert (pairs_ours == pairs_theirs).all(), threshold


def test_knn_graph_is_exact_and_searched_in_blocks(reps_data):
    x = reps_data.embeddings
    graph = knn_graph(x, k=5, max_distance=0.3, block_bytes=4 * len(x) * 7)
    assert graph.block_rows == 7 and graph.blocks == -(-len(x) // 7)
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    for i in range(len(x)):
        expected = sorted(d[i][d[i] <= 0.3])[:5]
        got = sorted(graph.distances[graph.rows == i])
        assert np.allclose(got, expected, atol=1e-5), i


def test_memory_stays_far_below_an_n_by_n_matrix(reps_data):
    # 4,600 faces: the 46 real faces, each 100 times with a tiny real-sized jitter.
    rng = np.random.default_rng(0)
    x = np.repeat(reps_data.embeddings, 100, axis=0)
    x = x + rng.normal(scale=0.01, size=x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    block = 4 * n * 64  # 64 rows a block
    tracemalloc.start()
    labels = cluster_embeddings(x, 0.12, k=16, block_bytes=block)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert block_rows_for(n, block) == 64
    assert peak < n * n * 4 / 4, f"peak {peak / 1e6:.1f} MB for {n} faces"  # an N x N float32 is 85 MB
    # k=16 links each face to its own copies: every face's 100 copies form one group, no person mixed.
    assert all(len(set(labels[i * 100:(i + 1) * 100])) == 1 for i in range(len(reps_data.embeddings)))
    assert pairwise_f(np.repeat(np.array(reps_data.people), 100), labels).precision > 0.95


def test_pairwise_f_counts_pairs():
    score = pairwise_f(["a", "a", "b", "b"], np.array([0, 0, 0, -1]))
    # predicted pairs: 3 (all in cluster 0), right: 1 (a-a); true pairs: 2.
    assert (score.precision, score.recall) == (1 / 3, 1 / 2)
    assert score.clusters == 1 and score.unknown == 1
    assert list(label_clusters(np.array([7, 7, 3, 5, 5, 5]))) == [1, 1, -1, 0, 0, 0]


def test_outputs_sheet_and_links(lfw_reps, reps_data, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    report = cluster_faces(lfw_reps, out, link="symlink", sheet_rows=3, sheet_columns=4)
    rows = _rows(out)
    assert list(rows[0]) == ["path", "face", "cluster", "crop"]
    assert [r["path"] for r in rows] == reps_data.paths and {r["face"] for r in rows} == {"0"}
    assert {r["cluster"] for r in rows} == {f"cluster-{i:04d}" for i in range(1, len(report.sizes) + 1)} | {"unknown"}
    with Image.open(out / SHEET_FILE) as sheet:
        assert sheet.size == (150 + 4 * 68 + 4, 4 * 68 + 4)  # 3 largest clusters + the unknown row
    links = out / "links"
    largest = sorted((links / "cluster-0001").iterdir())
    assert len(largest) == report.sizes[0]
    assert all(p.is_symlink() and p.resolve().is_file() for p in largest)
    assert len(list((links / "unknown").iterdir())) == report.unknown
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert sum(summary["sizes"]) + summary["unknown"] == len(rows)
    # A second run must not overwrite folders the user may have renamed.
    from facenet_cli.errors import FacenetError

    with pytest.raises(FacenetError, match="already exists"):
        cluster_faces(lfw_reps, out, link="symlink")


def test_hard_links_share_the_crop(lfw_reps, tmp_path):
    cluster_faces(lfw_reps, tmp_path / "out", link="hardlink", sheet=False)
    link = next((tmp_path / "out" / "links" / "cluster-0001").iterdir())
    crop = next(r["crop"] for r in _rows(tmp_path / "out") if Path(r["crop"]).name in link.name)
    assert not link.is_symlink() and os.path.samefile(link, crop)


def test_cli_json_summary(run_cli, lfw_reps, tmp_path):
    result = run_cli("cluster", lfw_reps, tmp_path / "out", "--json", "--max-distance", "0.12")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["threshold"] == 0.12 and summary["threshold_source"] == "--max-distance"
    assert summary["faces"] == 46 and sum(summary["sizes"]) + summary["unknown"] == 46
    assert summary["clusters"] == len(summary["sizes"]) >= 5


def test_photos_are_detected_aligned_and_grouped(run_cli, examples_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("lennon-1.jpg", "lennon-2.jpg", "clapton-1.jpg", "clapton-2.jpg"):
        shutil.copy(examples_dir / name, photos / name)
    from PIL import Image
    Image.new("RGB", (200, 200), (90, 140, 200)).save(photos / "sky.png")  # no face
    (photos / "notes.jpg").write_text("not an image")
    result = run_cli("cluster", photos, tmp_path / "out", "--json", "--max-distance", "0.15")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sum(summary["photos"].values()) == 6  # every file has one outcome
    assert summary["photos"].get("no-face") == 1 and summary["photos"].get("unreadable") == 1
    assert sorted(Path(p).name for p in summary["no_face"]) == ["notes.jpg", "sky.png"]
    cluster_of = {Path(r["path"]).name: r["cluster"] for r in _rows(tmp_path / "out")}
    assert cluster_of["lennon-1.jpg"] == cluster_of["lennon-2.jpg"] != "unknown"
    assert cluster_of["clapton-1.jpg"] == cluster_of["clapton-2.jpg"] != "unknown"
    assert cluster_of["lennon-1.jpg"] != cluster_of["clapton-1.jpg"]


def test_bad_input_gets_one_sentence(run_cli, lfw_reps, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("cluster", empty, tmp_path / "o1")
    assert result.exit_code == 2 and "holds no files" in result.stderr
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1

    one = tmp_path / "one"
    from facenet_cli import RepsWriter, read_reps

    reps = read_reps(lfw_reps)
    with RepsWriter(one, 1, 128, reps.meta) as writer:
        writer.add(reps.paths[0], "x", reps.embeddings[0])
    result = run_cli("cluster", one, tmp_path / "o2")
    assert result.exit_code == 1 and "only 1 face" in result.stderr

    faceless = tmp_path / "faceless"
    faceless.mkdir()
    from PIL import Image

    Image.new("RGB", (120, 120), (200, 200, 200)).save(faceless / "wall.png")
    result = run_cli("cluster", faceless, tmp_path / "o3")
    assert result.exit_code == 3 and "No face was found in any of the 1 files" in result.stderr  # NothingFound

    # OpenFace's own reps folders have no meta.json, so no model and no calibrated threshold.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(lfw_reps / "labels.csv", bare / "labels.csv")
    shutil.copy(lfw_reps / "reps.csv", bare / "reps.csv")
    result = run_cli("cluster", bare, tmp_path / "o4")
    assert result.exit_code == 2 and "pass --max-distance" in result.stderr
    assert run_cli("cluster", bare, tmp_path / "o4", "--max-distance", "0.12").exit_code == 0

    assert run_cli("cluster", lfw_reps, tmp_path / "o5", "--max-distance", "-1").exit_code == 2


def test_a_folder_holding_only_a_link_loop_holds_no_files(tmp_path, run_cli):
    """Linked folders are not entered (the photo source's policy): `up -> ..` is no file and no hang."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "up").symlink_to("..")
    (tmp_path / "elsewhere.jpg").write_bytes(b"a file reached only through the link")
    result = run_cli("cluster", source, tmp_path / "out")
    assert result.exit_code == 2 and "holds no files" in result.stderr
