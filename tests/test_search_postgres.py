"""search and identify on a PostgreSQL gallery ask the database for the shortlist and read only the
shortlisted people's faces (recognition/search.py, store.protocol.SearchesInPlace), and answer
exactly as the whole gallery read would: the same faces and people, in the same order, at the
same distances. Against a real PostgreSQL (tests/gallery_stores.py), real LFW photos and a
synthetic gallery big enough for the shortlist to matter."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.gallery_stores import new_postgres_gallery
from tests.helpers import known_and_queries

PEOPLE = ("Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Tony_Blair")
SYNTHETIC_PEOPLE, FACES_EACH = 300, 8


def counting_gallery_class():
    """A real PostgresGallery that counts what it reads: whole-gallery reads (snapshot(),
    enrolment(), faces()) and the face rows it hands out."""
    from facenet_cli.store.postgres import PostgresGallery

    class CountingGallery(PostgresGallery):
        whole_reads = 0
        faces_read = 0

        def _enrolment_rows(self):
            rows = super()._enrolment_rows()
            self.whole_reads += 1
            self.faces_read += len(rows)
            return rows

        def faces(self, person=None):
            found = super().faces(person)
            self.whole_reads += person is None
            self.faces_read += len(found)
            return found

        def people_enrolment(self, face_ids):
            got = super().people_enrolment(face_ids)
            self.faces_read += 0 if got is None else len(got.face_ids)
            return got

        def nearest_exact(self, vectors, k):
            found = super().nearest_exact(vectors, k)
            self.faces_read += sum(len(ids) for ids, _ in found)
            return found

    return CountingGallery


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic(postgres_url, tmp_path_factory):
    """The same 2,400 faces (300 people, 8 each, near each person's own direction) in a SQLite file
    and in PostgreSQL, added in the same order; and 40 queries near some people."""
    from facenet_cli.models.catalogue import CATALOGUE
    from facenet_cli.store.registry import open_store

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((SYNTHETIC_PEOPLE, 128))
    person = np.arange(SYNTHETIC_PEOPLE * FACES_EACH) % SYNTHETIC_PEOPLE
    faces = unit(centres[person] + 0.55 * rng.standard_normal((len(person), 128)))
    queries = unit(centres[rng.integers(0, SYNTHETIC_PEOPLE, 40)] + 0.55 * rng.standard_normal((40, 128)))
    rows = [(f"p{p:03d}", faces[i], f"faces/{i}.jpg", f"{i:064x}", None) for i, p in enumerate(person)]
    locations = str(tmp_path_factory.mktemp("synthetic") / "people.gallery"), new_postgres_gallery(postgres_url)
    for location in locations:
        with open_store(location, create=True) as store:
            store.bind(CATALOGUE["dlib-resnet.v1"], "dlib-resnet.v1", True)
            store.add_faces(rows)
            store.keep_index_current()
    return locations, queries


def whole_read_answers(location, queries, top, use_index):
    """What search answered before it asked the store: the gallery read whole, then searched
    (exactly, or with the store's index and refine_by_person)."""
    from facenet_cli.recognition.search import nearest_faces
    from facenet_cli.store.registry import open_store

    with open_store(location) as store:
        state, enrolment = store.snapshot()
        index = store.neighbour_index(state, enrolment).index if use_index else None
        return nearest_faces(queries, enrolment, top, index)


@pytest.mark.parametrize("use_index", ["always", "never"])
def test_search_in_place_answers_as_the_whole_gallery_read(synthetic, use_index):
    from facenet_cli.recognition.search import search_vectors
    from facenet_cli.store.registry import open_store

    (sqlite_path, pg), queries = synthetic
    top = 10
    with open_store(pg) as store:
        got = search_vectors(store, queries, top=top, use_index=use_index)
    assert got.search == ("index (database)" if use_index == "always" else "exact")
    assert got.gallery_faces == SYNTHETIC_PEOPLE * FACES_EACH
    before_ids, before_d = whole_read_answers(pg, queries, top, use_index == "always")
    assert (got.ids == before_ids).all()
    assert np.abs(got.distances - before_d).max() < 1e-6
    # The SQLite file numbers the same faces alike: an exact scan of it answers the same.
    exact_ids, exact_d = whole_read_answers(sqlite_path, queries, top, False)
    if use_index == "never":
        assert (got.ids == exact_ids).all() and np.abs(got.distances - exact_d).max() < 1e-6
    else:  # the shortlist holds the true neighbours for nearly every query here
        assert (got.ids[:, 0] == exact_ids[:, 0]).mean() >= 0.95


@pytest.mark.parametrize("use_index", ["always", "never"])
def test_search_in_place_reads_only_the_shortlisted_persons_faces(synthetic, use_index):
    from facenet_cli.recognition.search import EXACT_MARGIN, search_vectors

    (_, pg), queries = synthetic
    with counting_gallery_class()(pg) as store:
        got = search_vectors(store, queries[:1], top=5, use_index=use_index)
        assert store.whole_reads == 0
        # The index: the first person's faces, read to rank them exactly; an exact scan: the rows
        # the database ranked nearest, not the 2,400 faces.
        expected = FACES_EACH if use_index == "always" else 5 + EXACT_MARGIN
        assert store.faces_read == expected
        assert got.ids[0, 0] >= 0
        # The path it replaced read every face.
        store.snapshot()
        assert store.whole_reads == 1 and store.faces_read == expected + SYNTHETIC_PEOPLE * FACES_EACH


@pytest.fixture(scope="module")
def photo_galleries(lfw_images, postgres_url, tmp_path_factory):
    """Four people's first three LFW photos in a SQLite file and in PostgreSQL; their fourth photos."""
    from facenet_cli.recognition.enrol import add_to_gallery

    known, queries = known_and_queries(lfw_images, tmp_path_factory.mktemp("pg_search"), PEOPLE)
    sqlite_path, pg = str(tmp_path_factory.mktemp("g") / "people.gallery"), new_postgres_gallery(postgres_url)
    for location in (sqlite_path, pg):
        assert add_to_gallery(location, [known]).counts()["added"] == 3 * len(PEOPLE)
    return sqlite_path, pg, queries


def matches_of(result) -> list:
    return [[(m.person, m.source) for m in face.matches] for face in result.faces]


def distances_of(result) -> np.ndarray:
    return np.array([[m.distance for m in face.matches] for face in result.faces])


def test_search_photos_alike_on_both_stores_without_reading_the_postgres_gallery(photo_galleries, face_pipeline,
                                                                                run_cli):
    from facenet_cli import search_gallery

    sqlite_path, pg, queries = photo_galleries
    for query in sorted(queries.iterdir()):
        exact = search_gallery(sqlite_path, query, top=6, use_index="never", pipeline=face_pipeline)
        for use_index in ("always", "never", "auto"):
            with counting_gallery_class()(pg) as store:
                result = search_gallery(store, query, top=6, use_index=use_index, pipeline=face_pipeline)
                assert store.whole_reads == 0
            assert matches_of(result) == matches_of(exact)
            assert np.abs(distances_of(result) - distances_of(exact)).max() < 1e-6
            assert result.search == ("index (database)" if use_index == "always" else "exact")
            assert result.gallery_faces == 3 * len(PEOPLE)
    # Through the command line: the same JSON but for the gallery's name.
    query = sorted(queries.iterdir())[0]
    out = {}
    for location in (sqlite_path, pg):
        done = run_cli("search", location, query, "--top", "5", "--index", "never", "--json")
        assert done.exit_code == 0, done.stderr
        out[location] = json.loads(done.stdout)
    assert out[pg]["faces"][0]["matches"][0]["person"] == query.stem.rsplit("_", 1)[0]
    for data in out.values():
        data.pop("gallery")
        for match in data["faces"][0]["matches"]:
            match.pop("face_id")  # numbered by each store
    assert out[sqlite_path] == out[pg]
    table = run_cli("search", pg, query, "--top", "2", "--index", "always")
    assert table.exit_code == 0 and "2 most similar of 12" in table.stdout


def same_answers(got, expected) -> None:
    assert [(a.name, a.person) for a in got] == [(a.name, a.person) for a in expected]
    assert [[c.name for c in a.candidates] for a in got] == [[c.name for c in a.candidates] for a in expected]
    for a, b in zip(got, expected):
        assert abs(a.distance - b.distance) < 1e-6 and abs(a.score - b.score) < 1e-6 and a.far == b.far
        assert np.abs(np.array([c.distance for c in a.candidates]) - [c.distance for c in b.candidates]).max() < 1e-6


@pytest.mark.parametrize("method", ["mean", "nearest", "knn"])
def test_identify_in_place_answers_as_the_whole_gallery_read(synthetic, method):
    """The Matcher over the shortlisted people (shortlist.py) answers as the whole gallery's Matcher
    with the database's index, once the gallery state is calibrated; before, it declines."""
    from facenet_cli.recognition.matcher import matcher_for
    from facenet_cli.recognition.shortlist import in_place_matcher

    (_, pg), queries = synthetic
    with counting_gallery_class()(pg) as store:
        far = 0.05 if method == "nearest" else None
        assert in_place_matcher(store, method=method, far=far, threshold=None, k=3) is None  # not calibrated yet
        state, enrolment = store.snapshot()
        whole = matcher_for(enrolment, method=method, far=far, state=state)  # calibrated, and cached
        whole.use_index(store.neighbour_index(state, enrolment).index)
        expected = whole.answer(queries, top=5)
        reads = store.whole_reads, store.faces_read
        scanned = []
        matcher = in_place_matcher(store, method=method, far=far, threshold=None, k=3,
                                   wants_index=lambda rows: scanned.append(rows) or True)
        answers = matcher.answer(queries, top=5)
        assert store.whole_reads == reads[0]  # nothing read whole
        # each face reads the faces of its 16 shortlisted people (8 each) or a few more
        assert store.faces_read - reads[1] < len(queries) * 40 * FACES_EACH
        assert scanned == [SYNTHETIC_PEOPLE if method == "mean" else SYNTHETIC_PEOPLE * FACES_EACH]
        # An exact scan asked for (identify --index never, or auto below face_index.INDEX_MIN_FACES
        # rows) scans every person: the gallery is read, not asked.
        assert in_place_matcher(store, method=method, far=far, threshold=None, k=3,
                                wants_index=lambda rows: False) is None
        assert (matcher.size, matcher.threshold, matcher.far, matcher.method) == \
            (whole.size, whole.threshold, whole.far, whole.method)
        assert matcher.point.to_dict() == whole.point.to_dict()
        same_answers(answers, expected)
        assert sum(a.name != "unknown" for a in answers) > 0


def test_identify_photos_alike_on_both_stores(photo_galleries, face_pipeline, run_cli):
    """identify on PostgreSQL: the first call reads the gallery (to calibrate it), later ones
    only the shortlisted people's faces; the answers are the SQLite file's, through the library
    and the command line."""
    from facenet_cli import identify

    sqlite_path, pg, queries = photo_galleries

    def answers(result):
        return [(f.photo, f.answer.name, f.answer.person, [c.name for c in f.answer.candidates]) for f in result.faces]

    expected = identify(sqlite_path, [queries], use_index="never", pipeline=face_pipeline)
    with counting_gallery_class()(pg) as store:
        first = identify(store, [queries], use_index="always", pipeline=face_pipeline)
        assert store.whole_reads == 1 and first.search == "index (database)"
        again = identify(store, [queries], use_index="always", pipeline=face_pipeline)
        assert store.whole_reads == 1 and again.search == "index (database)"
    for result in (first, again):
        assert answers(result) == answers(expected)
        assert np.abs(np.array([f.answer.score for f in result.faces]) -
                      [f.answer.score for f in expected.faces]).max() < 1e-6
        assert (result.people, result.far_range) == (expected.people, expected.far_range)
        assert result.threshold == pytest.approx(expected.threshold, abs=1e-9)
    assert sorted(a[1] for a in answers(again)) == sorted(PEOPLE)
    out = {}
    for location in (sqlite_path, pg):
        done = run_cli("identify", location, queries, "--index", "always", "--json")
        assert done.exit_code == 0, done.stderr
        out[location] = json.loads(done.stdout)
    assert out[pg]["search"] == "index (database)" and out[sqlite_path]["search"].startswith("index (")
    for data in out.values():
        for key in ("gallery", "search"):
            data.pop(key)
    assert out[sqlite_path] == out[pg]


def test_an_empty_postgres_gallery_is_one_sentence(photo_galleries, postgres_url, run_cli):
    from facenet_cli.store.registry import open_store
    from tests.helpers import error_line

    _, _, queries = photo_galleries
    empty = new_postgres_gallery(postgres_url)
    open_store(empty, create=True).close()
    query = sorted(queries.iterdir())[0]
    for args in (("search", empty, query, "--index", "always"), ("search", empty, query),
                 ("identify", empty, queries, "--index", "always")):
        done = run_cli(*args)
        assert done.exit_code == 1 and "holds no faces" in error_line(done.stderr), (args, done.stderr)
        assert "Traceback" not in done.stderr
