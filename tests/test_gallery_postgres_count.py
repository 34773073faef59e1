"""The face count a PostgreSQL gallery keeps (store/postgres_schema.py migration 2: one row per
writing statement, folded at the end of each write), so `len(store)` and `state()` read a few
rows instead of counting every face. Each test checks it against count(*) of the faces, through
every way faces come and go: adds, a bulk first load, `gallery copy`, removes, moves, an
administrator's own SQL, two processes adding the same images at once, a writer killed mid-batch,
and a gallery made by the previous version (1), which is upgraded when first opened for writing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from facenet_cli.store.registry import open_store
from tests.conftest import ROOT
from tests.gallery_stores import as_role, new_postgres_gallery, read_only_url, run_sql
from tests.helpers import dlib_record as _record
from tests.helpers import unit_vectors


def _schema(location: str) -> str:
    return location.rsplit("gallery=", 1)[1]


def _counted(postgres_url: str, location: str) -> tuple[int, int]:
    """(count(*) of the faces, rows of the kept count), read by the administrator."""
    import psycopg

    schema = _schema(location)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        faces = db.execute(f"SELECT count(*) FROM {schema}.faces").fetchone()[0]
        rows = db.execute(f"SELECT count(*) FROM {schema}.face_count_deltas").fetchone()[0]
    return faces, rows


def _check(g, postgres_url: str, location: str, expected: int) -> None:
    faces, rows = _counted(postgres_url, location)
    assert len(g) == faces == expected and g.state().faces == expected
    assert rows <= 1  # folded at the end of every write: the sum stays one row


def _rows(tag: str, vectors: np.ndarray, start: int = 0) -> list[tuple]:
    return [(f"{tag}{i % 4}", vectors[i], f"{tag}/{i}.jpg", f"{tag}-{start + i}", None) for i in range(len(vectors))]


def test_the_count_follows_adds_bulk_loads_removes_and_moves(postgres_url, monkeypatch):
    from facenet_cli.store import postgres

    monkeypatch.setattr(postgres, "BULK_FACES", 20)
    location = new_postgres_gallery(postgres_url)
    with open_store(location, create=True) as g:
        assert len(g) == 0 and g.state().faces == 0
        g.bind(_record(), "dlib-resnet.v1", True)
        g.add_faces(_rows("p", unit_vectors(40, 1)))  # a bulk first load: loaded, then indexed
        _check(g, postgres_url, location, 40)
        assert g.keep_index_current() == "built"
        ids = g.add_faces(_rows("p", unit_vectors(12, 2), start=34))  # 6 of them already in
        assert ids.count(None) == 6
        _check(g, postgres_url, location, 46)
        assert g.add_faces(_rows("p", unit_vectors(3, 3), start=0)) == [None] * 3  # nothing new
        _check(g, postgres_url, location, 46)
        gone = g.remove_person("p1")
        _check(g, postgres_url, location, 46 - gone)
        first = g.faces()[0].id
        g.move_face(first, "moved")
        g.rename_person("p2", "renamed")
        _check(g, postgres_url, location, 46 - gone)
        g.remove_face(first)
        _check(g, postgres_url, location, 45 - gone)
    # An administrator's own statements are counted too (the triggers are in the database).
    schema = _schema(location)
    run_sql(postgres_url, f"DELETE FROM {schema}.faces WHERE id IN (SELECT id FROM {schema}.faces LIMIT 5)")
    with open_store(location) as g:
        assert len(g) == _counted(postgres_url, location)[0] == 40 - gone
        run_sql(postgres_url, f"TRUNCATE {schema}.faces")
        assert len(g) == 0 and g.state().faces == 0
        g.add_faces(_rows("q", unit_vectors(3, 4)))
        _check(g, postgres_url, location, 3)


def test_gallery_copy_counts_every_face(postgres_url, tmp_path):
    from facenet_cli.recognition.gallery_admin import copy_gallery

    source = tmp_path / "people.gallery"
    with open_store(source, create=True) as g:
        g.bind(_record(), "dlib-resnet.v1", True)
        g.add_faces(_rows("c", unit_vectors(25, 5)))
    there = new_postgres_gallery(postgres_url)
    copy_gallery(str(source), there, batch=10)
    copy_gallery(str(source), there, batch=10)  # a rerun adds nothing
    with open_store(there) as g:
        _check(g, postgres_url, there, 25)


_OVERLAPPING_WRITER = (
    "import sys, numpy as np\nfrom facenet_cli.store.registry import open_store\n"
    "from facenet_cli.models.catalogue import CATALOGUE\n"
    "location, seed, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
    "rng = np.random.default_rng(seed)\n"
    "with open_store(location, create=True) as g:\n"
    "    g.bind(CATALOGUE['dlib-resnet.v1'], 'dlib-resnet.v1', True)\n"
    "    for b in range(batches):\n"
    "        v = rng.standard_normal((6, 128)).astype(np.float32)\n"
    "        v /= np.linalg.norm(v, axis=1, keepdims=True)\n"
    # Images 0-3 of each batch are the same images in every writer; 4-5 are this writer's own.
    "        shas = [f'{b}-{i}' if i < 4 else f'{b}-{i}-{seed}' for i in range(6)]\n"
    "        g.add_faces([(f'w{i % 3}', v[i], f'{b}/{i}.jpg', shas[i], None) for i in range(6)])\n"
    "        print(b, flush=True)\n")


def _writer(location: str, seed: int, batches: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _OVERLAPPING_WRITER, location, str(seed), str(batches)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_writers_adding_the_same_images_and_one_killed_keep_the_count(postgres_url):
    location = new_postgres_gallery(postgres_url)
    killed = _writer(location, 99, 100_000)
    assert killed.stdout.readline(), killed.stderr.read()  # it has written, and goes on
    writers = [_writer(location, seed, 12) for seed in (1, 2)]
    for w in writers:
        _, err = w.communicate(timeout=180)
        assert w.returncode == 0, err
    os.kill(killed.pid, signal.SIGKILL)  # most likely mid-batch
    killed.wait(timeout=30)
    with open_store(location) as g:
        faces = _counted(postgres_url, location)[0]
        # Both writers' 12 batches: 4 shared images and 2 own ones each, at least.
        assert faces >= 12 * (4 + 2 + 2) and len(g) == faces == g.state().faces
        g.add_face("after", unit_vectors(1, 9)[0], "after.jpg", "f" * 64)
        _check(g, postgres_url, location, faces + 1)


def _make_version_1(location: str, monkeypatch) -> None:
    """A gallery as the previous facenet made it: only migration 1, written without the kept count."""
    from facenet_cli.store import postgres, postgres_schema

    with monkeypatch.context() as patched:
        patched.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS[:1])
        patched.setattr(postgres_schema, "LATEST", 1)
        patched.setattr(postgres, "LATEST", 1)
        patched.setattr(postgres, "fold_face_count", lambda db, schema: None)
        with open_store(location, create=True) as g:
            g.bind(_record(), "dlib-resnet.v1", True)
            g.add_faces(_rows("old", unit_vectors(30, 7)))
            g.remove_face(g.faces()[0].id)
            assert g.db.execute(f"SELECT value FROM {g._t['info']} WHERE key = 'version'").fetchone()[0] == "1"
            assert g.db.execute("SELECT to_regclass(%s)", (g._t["face_count_deltas"],)).fetchone()[0] is None


def test_a_version_1_gallery_is_upgraded_and_counts_right(postgres_url, monkeypatch):
    from facenet_cli.errors import DataError
    from facenet_cli.store.postgres_schema import LATEST

    location = new_postgres_gallery(postgres_url)
    _make_version_1(location, monkeypatch)
    schema = _schema(location)
    # Roles the administrator set up for the old gallery, table by table: their rights carry over
    # to the new table, so the reader still reads and the writer still writes once it is upgraded.
    writer = f"writer_{schema}"
    run_sql(postgres_url, f"CREATE ROLE {writer} LOGIN", f"GRANT USAGE ON SCHEMA {schema} TO {writer}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {writer}")
    reader = read_only_url(postgres_url, location)
    with pytest.raises(DataError, match="must be upgraded once by a role that can write it"):
        open_store(reader)
    with open_store(location) as g:  # upgraded here
        assert LATEST == 2 and g.db.execute(f"SELECT value FROM {schema}.info WHERE key = 'version'").fetchone()[0] \
            == "2"
        _check(g, postgres_url, location, 29)
    with open_store(reader) as r:
        assert r.read_only and len(r) == 29 and r.state().faces == 29
        assert "face_count_deltas" in r._face_count  # the kept count, not count(*)
    with open_store(as_role(location, writer)) as w:
        assert not w.read_only
        w.add_faces(_rows("new", unit_vectors(4, 8)))
        w.remove_person("old0")
    with open_store(location) as g:
        _check(g, postgres_url, location, _counted(postgres_url, location)[0])
        assert len(g) == 29 + 4 - 7  # old0's 8 faces, one removed before the upgrade
