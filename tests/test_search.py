"""`facenet search` and the gallery's search index (facenet_cli/store/face_index.py) on real LFW faces:
the index answers what exact search answers, stays current as the gallery changes, and a stale,
damaged or other-model index is rebuilt from the gallery, never trusted."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import copy_people, error_line

ROOT = Path(__file__).resolve().parents[1]
KNOWN = ("Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Tony_Blair")


@pytest.fixture(scope="module")
def photos(lfw_images, tmp_path_factory):
    """Three enrolled photos of each of four people, their fourth and fifth photos as queries."""
    root = tmp_path_factory.mktemp("search")
    copy_people(lfw_images, root / "all", {p: 5 for p in KNOWN})
    known, queries = root / "known", root / "queries"
    for person in KNOWN:
        files = sorted((root / "all" / person).iterdir())
        (known / person).mkdir(parents=True)
        for f in files[:3]:
            shutil.copy(f, known / person / f.name)
        queries.mkdir(exist_ok=True)
        for f in files[3:]:
            shutil.copy(f, queries / f.name)
    return known, queries


@pytest.fixture(scope="module")
def base_gallery(photos, tmp_path_factory):
    from facenet_cli.recognition.enrol import add_to_gallery

    path = tmp_path_factory.mktemp("g") / "people.gallery"
    assert add_to_gallery(path, [photos[0]]).counts()["added"] == 3 * len(KNOWN)
    return path


@pytest.fixture
def gallery(base_gallery, tmp_path):
    """A fresh copy of the gallery, without an index."""
    path = tmp_path / "people.gallery"
    shutil.copy(base_gallery, path)
    return path


def header_of(gallery: Path) -> dict:
    from facenet_cli.store.face_index import index_path, read_index

    return read_index(index_path(gallery)).header


def search(gallery, query, face_pipeline, **options):
    from facenet_cli.recognition.search import search_gallery

    return search_gallery(gallery, query, pipeline=face_pipeline, **options)


def test_search_cli_lists_the_most_similar_faces_and_builds_then_uses_the_index(gallery, photos, run_cli):
    from facenet_cli.store.face_index import index_path

    query = photos[1] / "Tony_Blair_0004.jpg"
    first = run_cli("search", gallery, query, "--top", "4", "--index", "always", "--json")
    assert first.exit_code == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["search"] == "index (built)" and index_path(gallery).is_file()
    assert data["gallery_faces"] == 12 and data["faces_found"] == 1
    matches = data["faces"][0]["matches"]
    assert len(matches) == 4
    assert matches[0]["person"] == "Tony_Blair"
    assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
    assert all(Path(m["source"]).parent.name == m["person"] for m in matches)
    # The same faces, in the same order, as an exact scan; the saved index is used the second time.
    exact = json.loads(run_cli("search", gallery, query, "--top", "4", "--index", "never", "--json").stdout)
    assert exact["search"] == "exact"
    assert [m["face_id"] for m in exact["faces"][0]["matches"]] == [m["face_id"] for m in matches]
    again = json.loads(run_cli("search", gallery, query, "--top", "4", "--index", "always", "--json").stdout)
    assert again["search"] == "index (used)"
    table = run_cli("search", gallery, query, "--top", "2")
    assert table.exit_code == 0 and "Tony_Blair" in table.stdout and "2 most similar of 12" in table.stdout


def test_index_kept_current_after_add_remove_and_move(gallery, photos, face_pipeline):
    from facenet_cli.store.face_index import index_path, read_index
    from facenet_cli.recognition.enrol import add_to_gallery
    from facenet_cli.recognition.gallery_admin import move_in_gallery, remove_from_gallery
    from facenet_cli.store.sqlite import Gallery

    assert search(gallery, photos[1] / "Colin_Powell_0004.jpg", face_pipeline, use_index="always").search == "index (built)"
    # Add a new person's photo (the real path: detect, embed, enrol): the index is patched, not rebuilt.
    added = add_to_gallery(gallery, [photos[1] / "Colin_Powell_0004.jpg"], name="Powell_Again")
    new_id = added.outcomes[0].face_id
    with Gallery(gallery) as g:
        state = g.state()
    header = header_of(gallery)
    assert header["generation"] == state.generation and header["faces"] == 13 == state.faces
    assert new_id in read_index(index_path(gallery))
    hit = search(gallery, photos[1] / "Colin_Powell_0004.jpg", face_pipeline, use_index="always", top=1)
    assert hit.search == "index (used)" and hit.faces[0].matches[0].face_id == new_id
    assert hit.faces[0].matches[0].distance < 1e-4  # the very photo
    # Move it to Tony Blair, then remove Colin Powell: each time the index stays current.
    move_in_gallery(gallery, new_id, "Tony_Blair")
    moved = search(gallery, photos[1] / "Colin_Powell_0004.jpg", face_pipeline, use_index="always", top=1)
    assert moved.search == "index (used)" and moved.faces[0].matches[0].person == "Tony_Blair"
    with Gallery(gallery) as g:
        powell_ids = [f.id for f in g.faces("Colin_Powell")]
    remove_from_gallery(gallery, "Colin_Powell")
    index = read_index(index_path(gallery))
    assert len(index) == 10 and not any(i in index for i in powell_ids)
    after = search(gallery, photos[1] / "Colin_Powell_0005.jpg", face_pipeline, use_index="always", top=10)
    assert after.search == "index (used)"
    assert "Colin_Powell" not in {m.person for m in after.faces[0].matches}
    assert len(after.faces[0].matches) == 10
    # Removing the last faces of the gallery removes the index (nothing left to index).
    for person in ("Donald_Rumsfeld", "George_W_Bush", "Tony_Blair"):
        remove_from_gallery(gallery, person)
    assert not index_path(gallery).exists()


def test_stale_index_is_rebuilt_not_trusted(gallery, photos, face_pipeline):
    from facenet_cli.store.sqlite import Gallery

    query = photos[1] / "Donald_Rumsfeld_0004.jpg"
    search(gallery, query, face_pipeline, use_index="always")
    # Another writer (e.g. an older facenet) changes the gallery without touching the index: the
    # face of the query photo itself is enrolled under a new name.
    vector = search(gallery, query, face_pipeline, use_index="never").faces[0]
    from facenet_cli.images import read_rgb

    embedding = face_pipeline.embed([face_pipeline.faces(read_rgb(query))[0].image])[0]
    with Gallery(gallery) as g:
        new_id = g.add_face("Rumsfeld_Twin", embedding, str(query), "sha-of-the-query")
    assert vector.matches[0].person == "Donald_Rumsfeld"
    result = search(gallery, query, face_pipeline, use_index="always", top=1)
    assert result.search == "index (rebuilt)" and "gallery changed" in result.index_note
    assert result.faces[0].matches[0].face_id == new_id
    assert header_of(gallery)["faces"] == 13
    assert search(gallery, query, face_pipeline, use_index="always").search == "index (used)"


@pytest.mark.parametrize("damage", ["truncated", "flipped-byte", "garbage", "empty"])
def test_damaged_index_is_rebuilt(gallery, photos, face_pipeline, damage):
    from facenet_cli.store.face_index import index_path

    query = photos[1] / "George_W_Bush_0004.jpg"
    exact = search(gallery, query, face_pipeline, use_index="never", top=5)
    search(gallery, query, face_pipeline, use_index="always")
    path = index_path(gallery)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "flipped-byte":
        path.write_bytes(data[:-50] + bytes([data[-50] ^ 0xFF]) + data[-49:])
    elif damage == "garbage":
        path.write_bytes(b"\x89PNG not an index" * 20)
    else:
        path.write_bytes(b"")
    result = search(gallery, query, face_pipeline, use_index="always", top=5)
    assert result.search == "index (rebuilt)", result.index_note
    assert ("damaged" if damage in ("truncated", "flipped-byte") else "not a facenet face index") in result.index_note
    assert [m.face_id for m in result.faces[0].matches] == [m.face_id for m in exact.faces[0].matches]
    assert path.read_bytes() != b"" and header_of(gallery)["faces"] == 12


def test_index_of_another_model_is_refused_and_rebuilt(gallery, photos, face_pipeline):
    from dataclasses import replace

    from facenet_cli.store.face_index import FaceIndex, index_path, write_index
    from facenet_cli.store.sqlite import Gallery

    with Gallery(gallery) as g:
        state, enrolment = g.snapshot()
    # An index of the same faces' ids but another model's (here: shuffled) embeddings, recorded as such.
    rng = np.random.default_rng(0)
    other = rng.standard_normal(enrolment.embeddings.shape).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    write_index(index_path(gallery), FaceIndex.build(other, enrolment.face_ids),
                replace(state, fingerprint="sha256-of-another-model"))
    query = photos[1] / "Tony_Blair_0005.jpg"
    result = search(gallery, query, face_pipeline, use_index="always", top=3)
    assert result.search == "index (rebuilt)" and "another model" in result.index_note
    assert result.faces[0].matches[0].person == "Tony_Blair"
    assert header_of(gallery)["model_fingerprint"] == state.fingerprint


def test_identify_with_the_index_answers_as_exact(gallery, photos, face_pipeline):
    from facenet_cli import identify

    for method in ("mean", "nearest", "knn"):
        exact = identify(gallery, [photos[1]], method=method, use_index="never", pipeline=face_pipeline)
        indexed = identify(gallery, [photos[1]], method=method, use_index="always", pipeline=face_pipeline)
        assert exact.search == "exact" and indexed.search.startswith("index (")
        assert [(f.answer.name, f.answer.person) for f in indexed.faces] == \
            [(f.answer.name, f.answer.person) for f in exact.faces]
        assert np.allclose([f.answer.score for f in indexed.faces], [f.answer.score for f in exact.faces])
        assert sum(f.answer.name == Path(f.photo).stem.rsplit("_", 1)[0] for f in indexed.faces) >= 7


def test_search_bad_input_one_sentence(gallery, photos, lfw_images, tmp_path, run_cli):
    from PIL import Image

    from facenet_cli.store.face_index import index_path

    query = photos[1] / "Tony_Blair_0004.jpg"
    with Image.open(lfw_images / "Colin_Powell" / "Colin_Powell_0001.jpg") as image:
        image.crop((0, 0, 60, 60)).resize((240, 240)).save(tmp_path / "wall.jpg")
    no_face = run_cli("search", gallery, tmp_path / "wall.jpg")
    assert no_face.exit_code == 3 and "No face was found" in error_line(no_face.stderr)  # NothingFound
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    broken = run_cli("search", gallery, tmp_path / "broken.jpg")
    assert broken.exit_code == 1 and "Traceback" not in broken.stderr
    missing = run_cli("search", gallery, tmp_path / "nope.jpg")
    assert missing.exit_code == 2 and "does not exist" in error_line(missing.stderr)
    folder = run_cli("search", gallery, photos[1])
    assert folder.exit_code == 2 and "is a folder" in error_line(folder.stderr)
    no_gallery = run_cli("search", tmp_path / "none.gallery", query)
    assert no_gallery.exit_code == 2 and "No gallery at" in error_line(no_gallery.stderr)
    (tmp_path / "k" / "Nobody").mkdir(parents=True)
    (tmp_path / "k" / "Nobody" / "x.jpg").write_bytes(b"junk")
    run_cli("gallery", "add", tmp_path / "empty.gallery", tmp_path / "k")
    assert not (tmp_path / "empty.gallery").exists()  # a gallery file appears with its first face
    # A gallery whose every face was removed exists but is empty.
    assert run_cli("gallery", "add", tmp_path / "empty.gallery", "--name", "X", query).exit_code == 0
    assert run_cli("gallery", "remove", tmp_path / "empty.gallery", "X").exit_code == 0
    empty = run_cli("search", tmp_path / "empty.gallery", query)
    assert empty.exit_code == 1 and "holds no faces" in error_line(empty.stderr)
    # A corrupt index is no user error: it is rebuilt from the gallery, with a note on stderr.
    index_path(gallery).write_bytes(b"facenet-face-index\n{broken")
    corrupt = run_cli("search", gallery, query, "--index", "always", "--top", "1")
    assert corrupt.exit_code == 0 and "Tony_Blair" in corrupt.stdout
    assert "header is damaged" in corrupt.stderr and "rebuilt" in corrupt.stderr


@pytest.mark.slow  # a benchmark script end to end
def test_search_million_quick():
    """The benchmark's --quick run: the same steps on a few thousand faces."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_million.py"), "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((ROOT / "work" / "search-million-quick" / "result.json").read_text())
    assert result["faces"] == 5000 and result["library"] == "faiss"
    for label in ("new photo", "variant"):
        assert result[label]["queries"] > 0
        assert result[label]["recall@1"] >= 0.95, result
        assert 0 < result[label]["p50_ms"] <= result[label]["p99_ms"]
    assert "| 5,000 |" in out.stdout


@pytest.mark.parametrize("grouped", [True, False])
def test_refine_by_person_makes_the_first_persons_faces_exact(grouped):
    """An index that names the right person but not that person's nearest face (what HNSW does
    among many near-identical photos) is corrected: the answer equals exact search's top K, and
    faces of other people the index found stay in the list in distance order."""
    from types import SimpleNamespace

    from facenet_cli.recognition.search import refine_by_person

    rng = np.random.default_rng(3)
    people = np.repeat(np.arange(6), 40)
    embeddings = rng.normal(size=(len(people), 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    face_ids = np.arange(100, 100 + len(people))
    if not grouped:  # rows in any order: the lookup must not assume a person's rows are contiguous
        order = rng.permutation(len(people))
        people, embeddings, face_ids = people[order], embeddings[order], face_ids[order]
    enrolment = SimpleNamespace(embeddings=embeddings, person_index=people, face_ids=face_ids)
    query = embeddings[7] + 0.01 * rng.normal(size=16).astype(np.float32)
    query /= np.linalg.norm(query)
    exact = np.maximum(2 - 2 * embeddings @ query, 0)
    truth = np.argsort(exact)[:5]
    # The "index" answers with a worse face of the query's person first, then a face of another.
    same = np.flatnonzero(people == people[truth[0]])
    worse = same[np.argsort(exact[same])[-1]]
    other = np.flatnonzero(people != people[truth[0]])[0]
    ids = np.array([[face_ids[worse], face_ids[other], -1, -1, -1]])
    distances = np.array([[exact[worse], exact[other], np.inf, np.inf, np.inf]], np.float32)
    got_ids, got_d = refine_by_person(query[None], ids, distances, enrolment, 5)
    expected = sorted([(exact[i], face_ids[i]) for i in same] + [(exact[other], face_ids[other])])[:5]
    assert got_ids[0].tolist() == [int(f) for _, f in expected]
    assert np.allclose(got_d[0], [d for d, _ in expected], atol=1e-5)
    assert got_ids[0, 0] == face_ids[truth[0]]
