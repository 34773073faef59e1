"""The gallery contract on every store (a SQLite file and PostgreSQL with pgvector, a real server
started by tests/gallery_stores.py), and what PostgreSQL adds: several galleries in one
database, a read-only role, masked passwords, `gallery copy` between stores byte for byte.

The contract tests take `gallery_location`, so each runs on both stores: the same writes give the
same people, faces, duplicates refused, nearest faces, whole batches only after kill -9, and no
face lost when two processes write at once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facenet_cli.errors import SpecMismatch, UsageError, WriteError
from facenet_cli.store.registry import open_store, shown_location
from tests.conftest import ROOT
from tests.gallery_stores import as_role as _as_role
from tests.gallery_stores import new_postgres_gallery, with_gallery
from tests.gallery_stores import read_only_url as _reader
from tests.gallery_stores import run_sql as _sql
from tests.helpers import dlib_record as _record
from tests.helpers import error_line, known_and_queries, unit_vectors

DIM = 128


# ------------------------------------------------------------------ the contract, on both stores

def test_store_contract(gallery_location):
    from facenet_cli.store.types import ExactIndex

    v = unit_vectors(6, 1)
    with open_store(gallery_location, create=True) as g:
        assert g.model is None and g.people() == [] and len(g) == 0
        g.bind(_record(), "dlib-resnet.v1", True)
        first = g.generation()
        ids = g.add_faces([("Ada", v[0], "known/Ada/1.jpg", "a" * 64, (1, 2, 30, 40)),
                           ("Grace", v[1], "known/Grace/1.jpg", "b" * 64, None),
                           ("Ada", v[2], "known/Ada/2.jpg", "a" * 64, None),  # the same image again
                           ("Ｅｍｍｙ", v[3], "known/Emmy/1.jpg", "c" * 64, None)])
        assert ids[2] is None and len({i for i in ids if i is not None}) == 3
        assert g.people() == [("Ada", 1), ("Emmy", 1), ("Grace", 1)]  # NFKC names, sorted
        assert g.generation() != first
        assert g.add_face("Ada", v[4], "known/Ada/3.jpg", "b" * 64) is None and g.has_image("b" * 64)
        assert [f.box for f in g.faces("Ada")] == [(1, 2, 30, 40)]
        enrolment = g.enrolment()
        assert enrolment.names == ["Ada", "Emmy", "Grace"]
        assert enrolment.embeddings.tobytes() == v[[0, 3, 1]].tobytes()  # the very bytes given
        state, snap = g.snapshot()
        assert state.faces == 3 and state.dim == DIM and np.array_equal(snap.face_ids, enrolment.face_ids)
        found, distances = g.nearest(v[:2], 2)
        exact = ExactIndex(enrolment).search(v[:2], 2)
        assert np.array_equal(found, exact[0]) and np.allclose(distances, exact[1], atol=1e-5)
        assert g.neighbour_index(state, enrolment).index.search(v[:1], 1)[0][0, 0] == ids[0]

        with pytest.raises(SpecMismatch, match="flip"):
            g.check_model("dlib-resnet.v1", _record().align.to_dict(), DIM, None, False)
        g.save_thumbnail("a" * 64, b"\xff\xd8jpeg")
        assert g.thumbnail("a" * 64) == b"\xff\xd8jpeg" and g.thumbnails() == {"a" * 64}
        assert g.move_face(ids[1], "Ada") == ("Grace", "Ada")
        assert g.people() == [("Ada", 2), ("Emmy", 1)]  # Grace left with her last face
        assert g.remove_face(ids[3]) == "Emmy"
        assert g.remove_person("Ada") == 2 and g.people() == [] and g.thumbnails() == set()
        with pytest.raises(UsageError, match="No one called 'Nobody'"):
            g.remove_person("Nobody")
        with pytest.raises(UsageError, match="No face with id 999"):
            g.move_face(999, "X")
    with open_store(gallery_location) as again:  # the model stays bound
        assert again.model.name == "dlib-resnet.v1" and again.model.flip


def test_renames_and_moves_at_the_edges_alike(gallery_location):
    """rename_person and move_face where the stores could differ: a person found by another Unicode
    form, renamed to the name they have, a refused new name (nothing changes), a face moved to
    the person it is with, a face id past 64 bits."""
    v = unit_vectors(3, 12)
    with open_store(gallery_location, create=True) as g:
        g.bind(_record(), "dlib-resnet.v1", True)
        ids = g.add_faces([("Jos\u00e9", v[0], "j1.jpg", "a" * 64, None), ("Jos\u00e9", v[1], "j2.jpg", "b" * 64, None),
                           ("Bo", v[2], "b.jpg", "c" * 64, None)])
        assert g.rename_person("Jose\u0301", "Jos\u00e9") == 2  # found in NFD, renamed to itself
        assert g.people() == [("Bo", 1), ("Jos\u00e9", 2)]
        before = g.generation()
        with pytest.raises(UsageError, match="slash"):
            g.rename_person("Bo", "B/o")
        with pytest.raises(UsageError, match="control character"):
            g.move_face(ids[2], "B\no")
        assert g.generation() == before and g.people() == [("Bo", 1), ("Jos\u00e9", 2)]
        assert g.move_face(ids[2], "\uff22o") == ("Bo", "Bo")  # to the person it is with (NFKC)
        assert g.people() == [("Bo", 1), ("Jos\u00e9", 2)]
        with pytest.raises(UsageError, match=f"No face with id {2 ** 64}"):
            g.move_face(2 ** 64, "Bo")
        with pytest.raises(UsageError, match=f"No face with id {2 ** 64}"):
            g.remove_face(2 ** 64)
        assert g.rename_person("\uff2a\uff4f\uff53\u00e9", "Bo") == 2  # merged into Bo, found by NFKC
        assert g.people() == [("Bo", 3)]


def test_a_gallery_add_that_enrols_nothing_leaves_it_unbound(gallery_location):
    with open_store(gallery_location, create=True) as g:
        g.bind(_record(), "dlib-resnet.v1", True)
    if "://" not in gallery_location:
        assert not Path(gallery_location).exists()
        return
    with open_store(gallery_location) as g:
        assert g.model is None


_WRITER = (
    "import sys, numpy as np\nfrom facenet_cli.store.registry import open_store\n"
    "from facenet_cli.models.catalogue import CATALOGUE\n"
    "location, tag, batches, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])\n"
    "rng = np.random.default_rng(abs(hash(tag)) % 1000)\n"
    "with open_store(location, create=True) as g:\n"
    "    g.bind(CATALOGUE['dlib-resnet.v1'], 'dlib-resnet.v1', True)\n"
    "    for b in range(batches):\n"
    "        v = rng.standard_normal((size, 128)).astype(np.float32)\n"
    "        v /= np.linalg.norm(v, axis=1, keepdims=True)\n"
    "        g.add_faces([(f'{tag}{i % 3}', v[i], f'{tag}/{b}/{i}.jpg', f'{tag}-{b}-{i}', None) for i in range(size)])\n"
    "        print(b, flush=True)\n")


def _writer(location: str, tag: str, batches: int, size: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, location, tag, str(batches), str(size)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_writers_at_once_lose_nothing(gallery_location):
    writers = [_writer(gallery_location, tag, 15, 4) for tag in ("x", "y")]
    for w in writers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    with open_store(gallery_location) as g:
        assert len(g) == 2 * 15 * 4
        assert sorted(g.people()) == [(f"{t}{i}", c) for t in "xy" for i, c in enumerate((30, 15, 15))]
        assert g.state().generation == 30  # one write transaction per batch, none lost


def test_a_reader_sees_another_programs_commit_at_once(gallery_location):
    """What two `facenet serve` processes sharing a gallery rely on: generation() moves as soon as
    another process commits (the server asks it twice a second)."""
    writer = _writer(gallery_location, "a", 1, 2)
    assert writer.wait(timeout=60) == 0, writer.stderr.read()
    with open_store(gallery_location) as reader:
        before, people = reader.generation(), reader.people()
        assert reader.generation() == before  # nothing changed: the same token
        writer = _writer(gallery_location, "b", 1, 2)
        assert writer.wait(timeout=60) == 0, writer.stderr.read()
        started = time.monotonic()
        while reader.generation() == before and time.monotonic() - started < 1.0:
            time.sleep(0.05)
        assert reader.generation() != before
        assert reader.people() == sorted(people + [("b0", 1), ("b1", 1)])


@pytest.mark.slow
def test_kill_9_mid_add_leaves_whole_batches(gallery_location):
    size = 40
    writer = _writer(gallery_location, "k", 100_000, size)
    for _ in range(3):  # three batches committed, then killed in the middle of another
        assert writer.stdout.readline(), writer.stderr.read()
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    with open_store(gallery_location, create=True) as g:
        count = len(g)
        assert count >= 3 * size and count % size == 0, count
        enrolment = g.enrolment()
        assert len(enrolment.face_ids) == count and g.state().generation == count // size
        assert g.add_face("after", unit_vectors(1, 9)[0], "after.jpg", "f" * 64) is not None  # writable at once


# ------------------------------------------------------------------ what PostgreSQL adds

def test_galleries_in_one_database_are_apart_and_names_are_checked(postgres_url):
    one, two = new_postgres_gallery(postgres_url), new_postgres_gallery(postgres_url)
    v = unit_vectors(2, 3)
    for location, person, vector in ((one, "Ada", v[0]), (two, "Grace", v[1])):
        with open_store(location, create=True) as g:
            g.bind(_record(), "dlib-resnet.v1", True)
            g.add_face(person, vector, f"{person}.jpg", "a" * 64)  # the same image may be in both
    with open_store(one) as g1, open_store(two) as g2:
        assert g1.people() == [("Ada", 1)] and g2.people() == [("Grace", 1)]
    with pytest.raises(UsageError, match="No gallery at"):
        open_store(new_postgres_gallery(postgres_url))
    with pytest.raises(UsageError, match="gallery name 'Bad-Name'"):
        open_store(with_gallery(postgres_url, "Bad-Name"))


def test_a_read_only_role_reads_and_is_refused_writes(postgres_url):
    location = new_postgres_gallery(postgres_url)
    v = unit_vectors(3, 4)
    with open_store(location, create=True) as g:
        g.bind(_record(), "dlib-resnet.v1", True)
        g.add_faces([("Ada", v[0], "a.jpg", "a" * 64, None), ("Grace", v[1], "g.jpg", "b" * 64, None)])
    with open_store(_reader(postgres_url, location)) as reader:
        assert reader.read_only and reader.people() == [("Ada", 1), ("Grace", 1)]
        assert reader.nearest(v[1:2], 1)[0][0, 0] == reader.faces("Grace")[0].id
        before = reader.generation()
        with pytest.raises(WriteError, match="read-only for this role"):
            reader.add_face("Linus", v[2], "l.jpg", "c" * 64)
        with pytest.raises(WriteError, match="read-only for this role"):
            reader.remove_person("Ada")
        assert reader.generation() == before


def test_passwords_are_never_shown(postgres_url, run_cli, tmp_path):
    secret = "s3cret-Pw"
    location = _as_role(new_postgres_gallery(postgres_url), "postgres", secret)
    assert shown_location(location).count("***") == 1 and secret not in shown_location(location)
    assert secret not in shown_location("postgresql://u@h/db?password=" + secret)
    with open_store(location, create=True) as g:
        g.bind(_record(), "dlib-resnet.v1", True)
        g.add_face("Ada", unit_vectors(1, 5)[0], "a.jpg", "a" * 64)
        assert secret not in g.location and secret not in str(g)
    runs = [run_cli("gallery", "list", location, "--json"), run_cli("gallery", "remove", location, "Nobody"),
            run_cli("gallery", "move", location, "x1", "Ada"),
            run_cli("gallery", "export", location, tmp_path / "out", "--json"),
            run_cli("gallery", "copy", location, tmp_path / "copy.gallery", "--json")]
    assert json.loads(runs[0].stdout)["gallery"] == shown_location(location)
    assert [r.exit_code for r in runs] == [0, 2, 2, 0, 0], [r.stderr for r in runs]
    for result in runs:
        assert secret not in result.stdout + result.stderr
    assert secret not in (tmp_path / "out" / "meta.json").read_text()
    with pytest.raises(Exception) as refused:  # a server that cannot be reached: masked too
        open_store(f"postgresql://someone:{secret}@/db?host=/nonexistent&gallery=g")
    assert secret not in str(refused.value) and "Cannot connect" in str(refused.value)
    with pytest.raises(Exception) as refused:  # a URL that libpq quotes back (a path folded its `//`)
        open_store(f"postgresql:/someone:{secret}@/db?host=/nonexistent")
    assert secret not in str(refused.value)


def test_a_bulk_load_builds_the_index_once_and_answers_alike(postgres_url, monkeypatch):
    from facenet_cli.store import postgres
    from facenet_cli.store.postgres_schema import has_search_index
    from facenet_cli.store.types import ExactIndex

    monkeypatch.setattr(postgres, "BULK_FACES", 20)
    v = unit_vectors(60, 10)
    location = new_postgres_gallery(postgres_url)
    with open_store(location, create=True) as g:
        g.bind(_record(), "dlib-resnet.v1", True)
        g.add_faces([(f"p{i % 7}", v[i], f"{i}.jpg", f"{i:064x}", None) for i in range(40)])  # into an empty gallery
        assert not has_search_index(g.db, g.schema)
        found = g.nearest(v[:5], 3)  # without the index: an exact scan in the database
        assert np.array_equal(found[0], ExactIndex(g.enrolment()).search(v[:5], 3)[0])
        g.add_faces([(f"p{i % 7}", v[i], f"{i}.jpg", f"{i:064x}", None) for i in range(40, 60)])
        assert g.keep_index_current() == "built" and has_search_index(g.db, g.schema)
        assert g.keep_index_current() == "none"
        exact = ExactIndex(g.enrolment()).search(v[:5], 3)
        assert np.array_equal(g.nearest(v[:5], 3)[0], exact[0])
        g.add_faces([("late", unit_vectors(30, 11)[i], f"l{i}.jpg", f"l{i}", None) for i in range(30)])
        assert has_search_index(g.db, g.schema)  # a big batch into a gallery with faces keeps the index


def test_a_busy_gallery_and_a_newer_one_are_said_in_one_sentence(postgres_url):
    import psycopg

    from facenet_cli.errors import DataError, FacenetError
    from facenet_cli.store.postgres_schema import LATEST

    location = new_postgres_gallery(postgres_url)
    schema = location.rsplit("gallery=", 1)[1]
    with open_store(location, create=True) as g:
        g.bind(_record(), "dlib-resnet.v1", True)
        g.add_face("Ada", unit_vectors(1, 7)[0], "a.jpg", "a" * 64)
    with psycopg.connect(postgres_url, autocommit=True) as other:  # another writer, mid-transaction
        other.execute("BEGIN")
        other.execute(f"SELECT value FROM {schema}.info WHERE key = 'generation' FOR UPDATE")
        with open_store(location, timeout=0.3) as g:
            with pytest.raises(FacenetError, match="locked by another program"):
                g.add_face("Grace", unit_vectors(1, 8)[0], "g.jpg", "b" * 64)
            assert g.people() == [("Ada", 1)]  # reading is not held up
        other.execute("ROLLBACK")
    # A dropped connection (a server restart, a failover): one sentence, then the store carries on.
    with open_store(location) as g:
        _sql(postgres_url, f"SELECT pg_terminate_backend({g.db.info.backend_pid})")
        with pytest.raises(FacenetError, match="connection to the gallery .* failed"):
            g.people()
        assert g.people() == [("Ada", 1)]
    _sql(postgres_url, f"UPDATE {schema}.info SET value = '{LATEST + 1}' WHERE key = 'version'")
    with pytest.raises(DataError, match=f"newer facenet \\(gallery version {LATEST + 1}\\)"):
        open_store(location)


def _gallery_contents(location) -> tuple:
    with open_store(location) as g:
        enrolment = g.enrolment()
        faces = {f.id: f for f in g.faces()}
        order = np.argsort(enrolment.face_ids)
        rows = [(enrolment.names[enrolment.person_index[i]], faces[int(enrolment.face_ids[i])].source,
                 faces[int(enrolment.face_ids[i])].image_sha256, faces[int(enrolment.face_ids[i])].box,
                 enrolment.embeddings[i].tobytes()) for i in order]
        return rows, g.model, sorted(g.thumbnails())


def test_gallery_copy_both_ways_keeps_every_byte(postgres_url, tmp_path, run_cli):
    source = tmp_path / "people.gallery"
    v = unit_vectors(5, 6)
    with open_store(source, create=True) as g:
        g.bind(_record(), "dlib-resnet.v1", True)
        g.add_faces([(p, v[i], f"{p}/{i}.jpg", f"{i}" * 64, (i, i, 10 + i, 10 + i) if i % 2 else None)
                     for i, p in enumerate(("Ada", "Ada", "Grace", "Linus", "Grace"))])
        g.save_thumbnail("1" * 64, b"thumb-1")
    there = new_postgres_gallery(postgres_url)
    back = tmp_path / "back.gallery"
    for src, dst in ((source, there), (there, back)):
        result = run_cli("gallery", "copy", src, dst, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["added"] == 5
    expected = _gallery_contents(source)
    assert _gallery_contents(there) == expected == _gallery_contents(back)
    again = run_cli("gallery", "copy", source, there, "--json")  # a rerun adds nothing
    assert again.exit_code == 0 and json.loads(again.stdout)["already_in"] == 5
    # Another model's gallery is refused whole.
    with open_store(tmp_path / "other.gallery", create=True) as other:
        other.bind(_record(), "dlib-resnet.v1", False)
        other.add_face("Zed", v[0], "z.jpg", "z" * 64)
    refused = run_cli("gallery", "copy", tmp_path / "other.gallery", there)
    assert refused.exit_code == 1 and "mirror average" in error_line(refused.stderr)
    assert len(_gallery_contents(there)[0]) == 5


# ------------------------------------------------------------------ the commands, on both stores

PEOPLE = ("Colin_Powell", "George_W_Bush", "Tony_Blair")


@pytest.fixture(scope="module")
def photos(lfw_images, tmp_path_factory):
    return known_and_queries(lfw_images, tmp_path_factory.mktemp("pg_photos"), PEOPLE)


def test_the_commands_answer_alike_on_both_stores(photos, postgres_url, tmp_path, run_cli):
    """gallery add / list / search / identify / export / remove on a SQLite file and on PostgreSQL
    (identify and search through a read-only role) give the same answers."""
    known, queries = photos
    sqlite_path, pg = str(tmp_path / "people.gallery"), new_postgres_gallery(postgres_url)
    for location in (sqlite_path, pg):
        added = run_cli("gallery", "add", location, known, "--json")
        assert added.exit_code == 0, added.stderr
        assert json.loads(added.stdout)["counts"]["added"] == 3 * len(PEOPLE)
    again = run_cli("gallery", "add", pg, *sorted((known / PEOPLE[0]).iterdir()), "--name", PEOPLE[0], "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["counts"]["already-in"] == 3
    reader = _reader(postgres_url, pg)

    def answers(*args):
        out = {}
        for location in (sqlite_path, reader):
            result = run_cli(*args[:1], *(args[1:2] if args[0] == "gallery" else ()), location,
                             *args[2 if args[0] == "gallery" else 1:], "--json")
            assert result.exit_code == 0, (args, result.stderr)
            out[location] = json.loads(result.stdout)
        return out[sqlite_path], out[reader]

    listed = answers("gallery", "list", "--with-faces")
    assert listed[0]["people"] == listed[1]["people"] == [{"name": p, "faces": 3} for p in PEOPLE]
    assert [(f["person"], f["source"], f["box"]) for f in listed[0]["faces"]] == \
        [(f["person"], f["source"], f["box"]) for f in listed[1]["faces"]]
    # identify and search through the library, which takes an opened store as the CLI hands it one
    # (cli/identify.py and cli/search.py take the gallery as a Path, which folds a URL's `//`).
    from facenet_cli import identify, search_gallery

    named, found = {}, {}
    query = sorted(queries.iterdir())[0]
    for location in (sqlite_path, reader):
        with open_store(location) as store:
            named[location] = [(f.photo, f.answer.name, round(f.answer.distance, 5))
                               for f in identify(store, [queries]).faces]
            for index in ("never", "always"):  # an exact scan, then the index (HNSW in the database)
                result = search_gallery(store, query, top=4, use_index=index)
                found[location, index] = [[(m.person, m.source, round(m.distance, 5)) for m in f.matches]
                                          for f in result.faces]
    assert named[sqlite_path] == named[reader]
    assert sorted(name for _, name, _ in named[reader]) == sorted(PEOPLE)
    assert found[sqlite_path, "never"] == found[reader, "never"] == found[reader, "always"]
    assert result.search == "index (database)"

    for location, out in ((sqlite_path, tmp_path / "a"), (pg, tmp_path / "b")):
        exported = run_cli("gallery", "export", location, out)
        assert exported.exit_code == 0, exported.stderr
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()
    assert np.load(tmp_path / "a" / "reps.npy").tobytes() == np.load(tmp_path / "b" / "reps.npy").tobytes()

    refused = run_cli("gallery", "remove", reader, PEOPLE[0])
    assert refused.exit_code == 1 and "read-only" in error_line(refused.stderr)
    removed = run_cli("gallery", "remove", pg, PEOPLE[2], "--json")
    assert removed.exit_code == 0 and json.loads(removed.stdout)["removed_faces"] == 3


@pytest.mark.slow
def test_the_benchmark_runs_quick(postgres_url, lfw_dir):
    """benchmarks/gallery_postgres.py --quick: both stores filled, searched and measured alike."""
    command = [sys.executable, str(ROOT / "benchmarks" / "gallery_postgres.py"), "--quick", "--faces", "1000",
               "--ef-search", "100", "--postgres", postgres_url]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| store | build s"))
    header = [cell.strip() for cell in lines[start].split("|")[1:-1]]  # columns by name: the table may grow
    rows = []
    for line in lines[start + 2:]:  # the first table, after its |---| line
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.split("|")[1:-1]])
    assert [r[0] for r in rows] == ["SQLite + faiss", "PostgreSQL + pgvector (ef_search 100)"]
    recall_columns = [i for i, name in enumerate(header) if name in ("recall@1", "same person")]
    assert len(recall_columns) == 4, header  # recall@1 and same person, both query sets
    for row in rows:
        assert min(float(row[i]) for i in recall_columns) >= 0.9, row
        assert float(row[header.index("disk MB")]) > 0


def test_two_servers_on_one_gallery_see_each_others_enrolment(gallery_location, monkeypatch):
    """Two `facenet serve` engines sharing one gallery (two machines' stand-ins): a face stored
    through one is in the other's view within a second, on every store."""
    import facenet_cli.serve.engine as engine_module
    from facenet_cli.serve.engine import Engine

    monkeypatch.setattr(engine_module, "GALLERY_POLL_S", 0.0)
    first, second = Engine(gallery_location), Engine(gallery_location)
    try:
        assert first.view().people == [] and second.view().people == []
        with first._lock:  # as the engine's own enrolment writes: through its one open store
            if first.store.model is None:
                first.store.bind(_record(), "dlib-resnet.v1", True)
            first.store.add_face("Ada", unit_vectors(1, 7)[0], "ada.jpg", "a" * 64)
        started = time.monotonic()
        while second.view().people != ["Ada"] and time.monotonic() - started < 1.0:
            time.sleep(0.02)
        assert second.view().people == ["Ada"]
        assert [p["name"] for p in second.listing()["people"]] == ["Ada"]
    finally:
        first.close()
        second.close()
