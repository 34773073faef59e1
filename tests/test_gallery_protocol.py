"""The gallery store seam (facenet_cli/store): a second backend is one module, the use cases and the
CLI reach any store through the protocol, the SQLite file's schema is migrated at open (a file of
the previous release opens as it is, a newer one is refused), the server notices changes through
the store, and the store imports nothing of the face pipeline.

The second backend here is `MemoryGallery`, a dict-backed store registered for `memory:NAME`
locations in this file alone: `facenet gallery add memory:people KNOWN/`, `facenet identify
memory:people ...`, `search_gallery(store, ...)` and `facenet gallery list memory:people` run on
it unchanged, and name the same faces as the same commands on a SQLite gallery and on PostgreSQL.
Each test that takes `gallery_location` or `galleries` runs on both stores; the migration tests are
about SQLite files of earlier releases (PostgreSQL's: test_gallery_postgres.py).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facenet_cli.errors import DataError, UsageError
from facenet_cli.store.names import name_keys, normalise_name, valid_face_id
from facenet_cli.store.registry import open_store, register_store
from facenet_cli.store.types import (ExactIndex, Face, GalleryModel, GalleryState, IndexUse, enrolment_of,
                                     model_fingerprint, refuse_other_model)
from tests.conftest import ROOT
from tests.helpers import error_line, known_and_queries

DATA = Path(__file__).resolve().parent / "data"
# Written by the release tagged `before-move` (see make_old_release_gallery): people Ada (2 faces)
# and Grace (1), dlib-resnet.v1 with flip, random unit vectors from default_rng(19).
OLD_RELEASE_GALLERY = DATA / "gallery-before-move.gallery"


# ------------------------------------------------------------------ a second backend, in one place

_MEMORY: dict[str, dict] = {}  # location -> the gallery's contents, shared by every store opened on it


class MemoryGallery:
    """A gallery store kept in this process's memory: the GalleryStore protocol, nothing more."""

    def __init__(self, location: str, *, create: bool = False, read_only: bool | None = None,
                 timeout: float = 0.0, salvage: bool = False):
        if location not in _MEMORY:
            if not create:
                raise UsageError(f"No gallery at {location}.")
            _MEMORY[location] = {"model": None, "faces": {}, "next": 1, "generation": 0, "thumbs": {}}
        self._g = _MEMORY[location]
        self._location = location
        self.read_only = bool(read_only)

    location = property(lambda self: self._location)
    model = property(lambda self: self._g["model"])

    def __str__(self) -> str:
        return self._location

    def bind(self, record, ref: str, flip: bool) -> GalleryModel:
        if self._g["model"] is None:
            self._g["model"] = GalleryModel(record.name, ref, model_fingerprint(record), record.align.to_dict(),
                                            record.embedding_dim, flip, record.to_dict())
        self.check_model(record.name, record.align.to_dict(), record.embedding_dim, model_fingerprint(record), flip)
        return self._g["model"]

    def check_model(self, name, align, dim, fingerprint, flip) -> None:
        refuse_other_model(self.model, self._location, name, align, dim, fingerprint, flip)

    def check_integrity(self) -> None:
        pass

    def people(self) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        for face in self._g["faces"].values():
            counts[face[0].person] = counts.get(face[0].person, 0) + 1
        return sorted(counts.items())

    def faces(self, person: str | None = None) -> list[Face]:
        keys = None if person is None else set(name_keys(person))
        return [f for f, _ in sorted(self._g["faces"].values(), key=lambda fv: fv[0].id)
                if keys is None or f.person in keys]

    def faces_by_id(self, face_ids) -> dict[int, Face]:
        return {int(i): self._g["faces"][int(i)][0] for i in face_ids if int(i) in self._g["faces"]}

    def __len__(self) -> int:
        return len(self._g["faces"])

    def has_image(self, image_sha256: str) -> bool:
        return any(f.image_sha256 == image_sha256 for f, _ in self._g["faces"].values())

    def enrolment(self):
        rows = sorted((f.person, f.id, v) for f, v in self._g["faces"].values())
        return enrolment_of([(i, p, v) for p, i, v in rows], self.model, self._location)

    def state(self) -> GalleryState:
        ids = list(self._g["faces"])
        model = self.model
        return GalleryState(self._location, self._g["generation"], len(ids), max(ids, default=0),
                            model.fingerprint if model else "", model.dim if model else 0, str(self._g["generation"]))

    def snapshot(self):
        return self.state(), (self.enrolment() if self._g["faces"] else None)

    def generation(self) -> int:
        return self._g["generation"]

    def neighbour_index(self, state, enrolment) -> IndexUse:
        return IndexUse(ExactIndex(enrolment), "exact")

    def nearest(self, vectors, k):
        return ExactIndex(self.enrolment()).search(vectors, k)

    def _write(self) -> None:
        if self.read_only:
            raise UsageError(f"The gallery {self._location} is read-only.")
        self._g["generation"] += 1

    def add_faces(self, rows) -> list[int | None]:
        rows = [(normalise_name(person), np.asarray(v, np.float32).reshape(-1), source, sha, box)
                for person, v, source, sha, box in rows]  # every name checked before any face lands
        self._write()
        ids: list[int | None] = []
        for person, vector, source, sha, box in rows:
            if self.has_image(sha):
                ids.append(None)
                continue
            face_id = self._g["next"]
            self._g["next"] += 1
            self._g["faces"][face_id] = (Face(face_id, person, source, sha, box, time.time()), vector)
            ids.append(face_id)
        return ids

    def add_face(self, person, embedding, source, image_sha256, box=None):
        return self.add_faces([(person, embedding, source, image_sha256, box)])[0]

    def _face(self, face_id: int) -> Face:
        if not valid_face_id(int(face_id)) or int(face_id) not in self._g["faces"]:
            raise UsageError(f"No face with id {face_id} is in {self._location}.")
        return self._g["faces"][int(face_id)][0]

    def remove_person(self, name: str) -> int:
        gone = [f.id for f in self.faces(name)]
        if not gone:
            raise UsageError(f"No one called {name!r} is in {self._location}.")
        self._write()
        for face_id in gone:
            self._drop(face_id)
        return len(gone)

    def _drop(self, face_id: int) -> None:
        face, _ = self._g["faces"].pop(face_id)
        self._g["thumbs"].pop(face.image_sha256, None)

    def remove_face(self, face_id: int) -> str:
        person = self._face(face_id).person
        self._write()
        self._drop(int(face_id))
        return person

    def move_face(self, face_id: int, new_name: str) -> tuple[str, str]:
        face, target = self._face(face_id), normalise_name(new_name)
        self._write()
        vector = self._g["faces"][face.id][1]
        self._g["faces"][face.id] = (Face(face.id, target, face.source, face.image_sha256, face.box, face.added),
                                     vector)
        return face.person, target

    def rename_person(self, name: str, new_name: str) -> int:
        faces = self.faces(normalise_name(name))
        for face in faces:
            self.move_face(face.id, new_name)
        if not faces:
            raise UsageError(f"No one called {name!r} is in {self._location}.")
        return len(faces)

    def keep_index_current(self) -> str:
        return "none"

    def save_thumbnail(self, image_sha256: str, jpeg: bytes) -> None:
        self._g["thumbs"][image_sha256] = jpeg

    def thumbnail(self, image_sha256: str) -> bytes | None:
        return self._g["thumbs"].get(image_sha256)

    def thumbnails(self) -> set[str]:
        return set(self._g["thumbs"])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


register_store("memory", MemoryGallery)


# ------------------------------------------------------------------ the protocol, through the use cases

PEOPLE = ("Colin_Powell", "George_W_Bush", "Tony_Blair")


@pytest.fixture(scope="module")
def photos(lfw_images, tmp_path_factory):
    return known_and_queries(lfw_images, tmp_path_factory.mktemp("protocol"), PEOPLE)


def test_both_backends_are_gallery_stores(gallery_location, store_kind):
    from facenet_cli import Gallery, GalleryStore

    with open_store(gallery_location, create=True) as built_in, \
            open_store("memory:conformance", create=True) as memory_store:
        assert isinstance(built_in, Gallery) == (store_kind == "sqlite") and isinstance(memory_store, MemoryGallery)
        assert isinstance(built_in, GalleryStore) and isinstance(memory_store, GalleryStore)
    with pytest.raises(UsageError, match="No gallery store opens 'mysql://db/people'"):
        open_store("mysql://db/people")


def test_a_store_of_another_backend_serves_add_identify_search_and_list(photos, gallery_location, run_cli):
    """The same commands on a built-in store and on the memory store name the same faces alike."""
    from facenet_cli import identify, search_gallery

    known, queries = photos
    built_in = gallery_location  # a SQLite file, then a PostgreSQL gallery
    _MEMORY.pop("memory:people", None)  # made afresh for each store's run
    for location in (built_in, "memory:people"):
        added = run_cli("gallery", "add", location, known, "--json")
        assert added.exit_code == 0, added.stderr
        assert json.loads(added.stdout)["counts"]["added"] == 3 * len(PEOPLE)
    assert not Path("memory:people").exists()  # the location never became a file

    listed = {}
    for location in (built_in, "memory:people"):
        result = run_cli("gallery", "list", location, "--json")
        assert result.exit_code == 0, result.stderr
        listed[str(location)] = json.loads(result.stdout)
    assert listed["memory:people"]["people"] == listed[str(built_in)]["people"] == \
        [{"name": p, "faces": 3} for p in PEOPLE]
    assert listed["memory:people"]["gallery"] == "memory:people"

    cli_answers = {}
    for location in (built_in, "memory:people"):
        result = run_cli("identify", location, queries, "--json")
        assert result.exit_code == 0, result.stderr
        cli_answers[str(location)] = [(f["photo"], f["name"], round(f["distance"], 5))
                                      for f in json.loads(result.stdout)["faces"]]
    assert cli_answers["memory:people"] == cli_answers[str(built_in)]
    assert sorted(name for _, name, _ in cli_answers["memory:people"]) == sorted(PEOPLE)

    # The library calls take an opened store as well as a location.
    with open_store("memory:people") as store:
        named = identify(store, [queries])
        assert [f.answer.name for f in named.faces] == [name for _, name, _ in cli_answers["memory:people"]]
        query = next(queries.iterdir())
        from_memory = search_gallery(store, query, top=3, use_index="always")
    from_file = search_gallery(built_in, query, top=3, use_index="never")
    assert from_memory.search == "index (exact)"
    assert [(m.person, m.source, round(m.distance, 5)) for m in from_memory.faces[0].matches] == \
        [(m.person, m.source, round(m.distance, 5)) for m in from_file.faces[0].matches]

    # Admin use cases through the protocol.
    removed = run_cli("gallery", "remove", "memory:people", "Tony_Blair", "--json")
    assert removed.exit_code == 0 and json.loads(removed.stdout)["removed_faces"] == 3
    with open_store("memory:people") as store:
        assert [name for name, _ in store.people()] == ["Colin_Powell", "George_W_Bush"]


# ------------------------------------------------------------------ migrations

def make_old_release_gallery(dest: Path) -> None:
    """How OLD_RELEASE_GALLERY was made: the release tagged `before-move`, run from
    `git archive before-move` (its gallery module was facenet_cli/gallery.py)."""
    import tempfile

    script = (
        "import sys, numpy as np\n"
        "from facenet_cli.gallery import Gallery\nfrom facenet_cli.catalogue import CATALOGUE\n"
        "v = np.random.default_rng(19).standard_normal((3, 128)).astype(np.float32)\n"
        "v /= np.linalg.norm(v, axis=1, keepdims=True)\n"
        "with Gallery(sys.argv[1], create=True) as g:\n"
        "    g.bind(CATALOGUE['dlib-resnet.v1'], 'dlib-resnet.v1', True)\n"
        "    g.add_faces([('Ada', v[0], 'known/Ada/a1.jpg', 'a' * 64, (10, 20, 110, 120)),\n"
        "                 ('Ada', v[1], 'known/Ada/a2.jpg', 'b' * 64, (5, 5, 90, 90)),\n"
        "                 ('Grace', v[2], 'known/Grace/g1.jpg', 'c' * 64, None)])\n")
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "before-move"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        subprocess.run([sys.executable, "-c", script, str(dest)], cwd=old, env={**os.environ, "PYTHONPATH": old},
                       check=True)


def _old_vectors() -> np.ndarray:
    v = np.random.default_rng(19).standard_normal((3, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_gallery_of_the_previous_release_opens_as_it_is(tmp_path, run_cli):
    """SQLite only: a file an earlier release wrote."""
    from facenet_cli import Gallery
    from facenet_cli.store.migrations import LATEST

    path = tmp_path / "old.gallery"
    shutil.copy(OLD_RELEASE_GALLERY, path)
    before = _sha256(path)
    with Gallery(path) as gallery:
        assert gallery.people() == [("Ada", 2), ("Grace", 1)]
        assert gallery.model.name == "dlib-resnet.v1" and gallery.model.flip is True
        assert [f.box for f in gallery.faces()] == [(10, 20, 110, 120), (5, 5, 90, 90), None]
        enrolment = gallery.enrolment()
        assert np.array_equal(enrolment.embeddings, _old_vectors())
        ids, distances = gallery.nearest(_old_vectors()[2:], 1)
        assert gallery.faces_by_id(ids[0])[int(ids[0, 0])].person == "Grace" and distances[0, 0] < 1e-6
    listed = run_cli("gallery", "list", path, "--json")
    assert listed.exit_code == 0, listed.stderr
    assert json.loads(listed.stdout)["total_faces"] == 3
    assert _sha256(path) == before  # reading changed nothing: its schema is the current one
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM info WHERE key = 'version'").fetchone()[0] == str(LATEST)
    db.close()
    # And it takes writes as a gallery made today.
    with Gallery(path, create=True) as gallery:
        assert gallery.add_face("Linus", _old_vectors()[0] * -1, "l.jpg", "d" * 64) == 4
    with Gallery(path) as gallery:
        assert dict(gallery.people()) == {"Ada": 2, "Grace": 1, "Linus": 1}


def test_a_gallery_of_a_newer_facenet_is_refused_in_one_sentence(tmp_path, run_cli):
    """SQLite only: a file's version row (PostgreSQL's: test_gallery_postgres.py, a busy gallery and a newer one)."""
    from facenet_cli import Gallery
    from facenet_cli.store.migrations import LATEST

    path = tmp_path / "newer.gallery"
    shutil.copy(OLD_RELEASE_GALLERY, path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE info SET value = ? WHERE key = 'version'", (str(LATEST + 1),))
    db.close()
    with pytest.raises(DataError, match=f"written by a newer facenet \\(gallery version {LATEST + 1}\\)"):
        Gallery(path)
    for args in (("gallery", "list", path), ("gallery", "add", path, "--name", "X", path),
                 ("identify", path, path)):
        result = run_cli(*args)
        assert result.exit_code == 1, (args, result.stderr)
        line = error_line(result.stderr)
        assert "newer facenet" in line and "upgrade facenet" in line and "Traceback" not in result.stderr, line


def test_a_new_migration_is_applied_once_at_open(tmp_path, monkeypatch):
    """A later schema change is one more (number, function): applied to an older file when it is
    opened for writing, in one transaction, and recorded; a file that cannot be written is refused.
    SQLite only: the SQLite file's migrations (PostgreSQL's are store/postgres_schema.py's)."""
    from facenet_cli import Gallery
    from facenet_cli.store import migrations

    calls = []

    def add_notes(db):
        calls.append(1)
        db.execute("ALTER TABLE faces ADD COLUMN note TEXT")

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [(2, add_notes)])
    monkeypatch.setattr(migrations, "LATEST", 2)
    path = tmp_path / "old.gallery"
    shutil.copy(OLD_RELEASE_GALLERY, path)
    path.chmod(0o444)
    if not os.access(path, os.W_OK):  # (root can write whatever the mode)
        with pytest.raises(DataError, match="earlier facenet"):
            Gallery(path)
    path.chmod(0o644)
    for _ in range(2):
        with Gallery(path) as gallery:
            assert gallery.people() == [("Ada", 2), ("Grace", 1)]
    assert calls == [1]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM info WHERE key = 'version'").fetchone()[0] == "2"
        assert "note" in [row[1] for row in db.execute("PRAGMA table_info(faces)")]
    db.close()
    with Gallery(tmp_path / "new.gallery", create=True) as gallery:  # a new gallery gets every migration
        assert gallery.people() == []
    assert calls == [1, 1]


# ------------------------------------------------------------------ changes, as the server sees them

_ADD_FACE = (
    "import sys, numpy as np\nfrom facenet_cli import open_store\nfrom facenet_cli.models.catalogue import CATALOGUE\n"
    "v = np.random.default_rng(int(sys.argv[3])).standard_normal(128).astype(np.float32)\n"
    "with open_store(sys.argv[1], create=True) as g:\n"
    "    if g.model is None:\n"
    "        g.bind(CATALOGUE['dlib-resnet.v1'], 'dlib-resnet.v1', True)\n"
    "    g.add_face(sys.argv[2], v / np.linalg.norm(v), sys.argv[2] + '.jpg', str(sys.argv[3]) * 64)\n")


def _add_in_another_process(gallery: str | Path, person: str, seed: int) -> None:
    subprocess.run([sys.executable, "-c", _ADD_FACE, str(gallery), person, str(seed)], cwd=ROOT, check=True,
                   timeout=120)


def test_generation_moves_with_every_commit_and_with_nothing_else(gallery_location, store_kind):
    path = gallery_location
    with open_store(path, create=True) as reader:  # opened before the gallery exists (SQLite: in memory, no file)
        first = reader.generation()
        assert reader.generation() == first
        _add_in_another_process(path, "Ada", 1)
        second = reader.generation()  # the file another program made is the one read now
        assert second != first and reader.people() == [("Ada", 1)]
        if store_kind == "sqlite":
            os.utime(path, (time.time() + 60, time.time() + 60))  # file times are not what it watches
        assert reader.generation() == second
        _add_in_another_process(path, "Grace", 2)
        third = reader.generation()
        assert third != second and reader.people() == [("Ada", 1), ("Grace", 1)]
        reader.remove_person("Ada")  # its own writes too
        assert reader.generation() not in (first, second, third)


def test_the_server_notices_a_change_made_by_another_program(gallery_location, store_kind, monkeypatch):
    import facenet_cli.serve.engine as engine_module
    from facenet_cli.serve.engine import Engine

    monkeypatch.setattr(engine_module, "GALLERY_POLL_S", 0.0)
    path = gallery_location
    engine = Engine(path)  # no gallery yet
    try:
        start = engine.view()
        assert start.people == [] and start.matcher is None
        _add_in_another_process(path, "Ada", 3)
        seen = engine.view()
        assert seen.people == ["Ada"] and seen.version > start.version
        assert [p["name"] for p in engine.listing()["people"]] == ["Ada"]
        if store_kind == "sqlite":
            os.utime(path, (time.time() + 60, time.time() + 60))
        assert engine.view().version == seen.version  # a touched file is not a changed gallery
        _add_in_another_process(path, "Grace", 4)
        assert engine.view().people == ["Ada", "Grace"]
    finally:
        engine.close()


# ------------------------------------------------------------------ layering

FORBIDDEN = ("facenet_cli.pipeline", "facenet_cli.align", "facenet_cli.nets", "facenet_cli.detect",
             "facenet_cli.recognition", "facenet_cli.executors", "facenet_cli.serve", "facenet_cli.cli",
             "torch", "dlib", "cv2")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (inside functions too; `if TYPE_CHECKING:` blocks left out),
    relative imports resolved against facenet_cli.store."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = ["facenet_cli", "store"][:max(0, 3 - node.level)]
                base = ".".join(package + ([base] if base else []))
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_the_store_imports_nothing_of_the_pipeline():
    store = ROOT / "facenet_cli" / "store"
    files = sorted(store.glob("*.py"))
    assert {f.name for f in files} >= {"sqlite.py", "protocol.py", "registry.py", "migrations.py", "face_index.py"}
    wrong = [f"{path.name}:{line} imports {name}" for path in files for line, name in _imports(path)
             if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)]
    assert not wrong, wrong
    assert ("facenet_cli.store.types" in {name for _, name in _imports(store / "sqlite.py")})  # the parser sees them
    # And at run time: opening and reading a gallery loads none of it.
    code = ("import sys\nfrom facenet_cli.store.registry import open_store\n"
            f"with open_store({str(OLD_RELEASE_GALLERY)!r}) as g:\n    g.enrolment(); g.people()\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'dlib', 'cv2') or "
            "m.startswith(('facenet_cli.pipeline', 'facenet_cli.align', 'facenet_cli.nets', 'facenet_cli.detect'))]\n"
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
