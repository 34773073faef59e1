"""The SQLite gallery store: people, their faces' embeddings and the model record in one file.

Layout (stdlib sqlite3, WAL journal so that readers such as `identify` or a web server read while
`gallery add` writes; every write is a transaction: `gallery add` enrols a batch of faces in
one, so a crash loses at most the batch in flight). The schema is built by numbered migrations
applied at open (store/migrations.py):

- `info(key, value)`: `format` = "facenet-gallery", `version` (the last migration applied), `model`
  (the model record as JSON), `model_ref` (the catalogue name or checkpoint path to load it again),
  `fingerprint` (SHA-256 of the weights), `flip` (1 when embeddings average the mirror image),
  `created`, `gallery_id` (a random id), `generation` (bumped by every write transaction) and
  `revision` (a random token replaced by every write transaction, so two copies of one gallery
  that were changed apart never look alike): what the search index beside the gallery
  (store/face_index.py) checks it is current against.
- `people(id, name UNIQUE, added)`: names NFKC-normalised (store/names.py).
- `faces(id, person_id, embedding float32 BLOB, source, image_sha256 UNIQUE, box_*, added)`.

Beside the file: `<gallery>.index` (the nearest-neighbour index, rebuilt whenever it is stale) and
`<gallery>.thumbs/` (thumbnails, store/thumbs.py). Callers reach both through the store.

The file appears with its first faces: until then a new gallery lives in memory, and its first
commit is copied to a temporary file linked into place, so a `gallery add` that fails or is killed
before any face lands leaves no file (that the next run would take for a gallery bound to a model).
A gallery the user cannot write to (a read-only file or folder) is opened read-only, so reading
commands work and writing ones say so in one sentence.

`generation()` is what a long-running reader polls: SQLite's `PRAGMA data_version` (which moves
when another connection commits) and, when it or this store's own writes moved, the revision row.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from ..errors import DataError, FacenetError, UsageError
from .face_index import INDEX_MIN_FACES, apply_changes, current_index, index_path
from .migrations import FORMAT, applied_version, migrate, outdated, refuse_newer
from .names import name_keys, normalise_name, valid_face_id
from .registry import register_store, scheme_of
from .sqlite_errors import Guarded, translate_errors
from .sqlite_file import (REBUILD_ADVICE, check_can_create, connect_file, generation_in, model_from_info,
                          read_only_error, write_new_file)
from .thumbs import read_thumb, remove_thumbs, save_thumb, thumb_keys
from .types import (DEFAULT_TIMEOUT, Enrolment, ExactIndex, Face, GalleryChanges, GalleryModel, GalleryState,
                    IndexUse, enrolment_of, model_fingerprint, refuse_other_model)

if TYPE_CHECKING:  # annotations only
    from ..models.catalogue import ModelRecord

class SqliteGallery:
    """One gallery file, a GalleryStore (store/protocol.py). `SqliteGallery(path)` (also
    `Gallery(path)`, or `open_store(path)`) opens an existing one (read-only when the file or its
    folder cannot be written, or when `read_only=True`); `create=True` is for writing: a missing
    gallery is made by its first faces (until then it is empty, in memory), and a read-only one is
    refused. `salvage=True` (`gallery list`) lets a gallery whose version record is damaged be read.
    One store may serve several threads (the server): each call holds the store's lock.
    Use as a context manager, or call `close()`."""

    def __init__(self, path: str | os.PathLike, create: bool = False, timeout: float = DEFAULT_TIMEOUT, *,
                 salvage: bool = False, read_only: bool | None = None):
        self.path = Path(path)
        self.changes = GalleryChanges()
        self.read_only = bool(read_only)
        self._forced_read_only = bool(read_only)
        self._timeout = timeout
        self._salvage = salvage
        self._lock = threading.RLock()
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file the connection reads
        self._opened = 0  # connections opened so far: part of the generation token
        self._writes = 0  # this store's committed write transactions
        self._token: tuple | None = None  # the last generation() answer
        self._seen: tuple[int, int] = (-1, -1)  # (data_version, _writes) it was read at
        self._new = False  # not on disk yet: the first commit of faces makes the file (_first_commit)
        self._bound: dict[str, str] | None = None  # the model rows this process bound (bind)
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a folder; a gallery is one file, e.g. people.gallery.")
        if not self.path.exists():
            if not create:
                raise UsageError(f"No gallery at {self.path}; create one with "
                                 f"`facenet gallery add {self.path} KNOWN/`.")
            check_can_create(self.path)
            self._new = True
            self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._opened += 1
            with self._sql("open"):
                self._create()
            return
        self._open_file(create)

    def _open_file(self, create: bool) -> None:
        self._db, cannot_write = connect_file(self.path, self._timeout, create)
        self.read_only = cannot_write or self._forced_read_only
        self._opened += 1
        try:
            stat = self.path.stat()
            self._file_id = (stat.st_dev, stat.st_ino)
            with self._sql("read"):
                self._db.execute("PRAGMA foreign_keys = ON")
                if self._is_blank():
                    if cannot_write:  # an empty file: an empty gallery, read in memory
                        self._db.close()
                        self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                    self._create()
                else:
                    self._check_format()
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SqliteGallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def location(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"SqliteGallery({str(self.path)!r})"

    def _sql(self, doing: str) -> Guarded:
        """Hold the store's lock and turn SQLite's errors into one-sentence ones."""
        return Guarded(self._lock, translate_errors(self.path, doing))

    def _is_blank(self) -> bool:
        return self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0

    def _create(self) -> None:
        self._use_wal()
        migrate(self._db, self.path)

    def _use_wal(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() not in ("wal", "memory"):  # e.g. no shared memory: still correct, less concurrent
            self._db.execute("PRAGMA journal_mode = DELETE")

    def _rollback(self) -> None:
        """End the open transaction, if SQLite has not ended it itself (it does on a full disk, for
        one): a failing ROLLBACK must not hide the error that led to it."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _check_format(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"info", "people", "faces"} <= tables:
            raise DataError(f"{self.path} is an SQLite database but not a facenet gallery; give a gallery file "
                            "or a new path to create one.")
        info = self._info()
        if info.get("format") != FORMAT:
            raise DataError(f"{self.path} is an SQLite database but not a facenet gallery; give a gallery file "
                            "or a new path to create one.")
        version = applied_version(self._db)
        refuse_newer(version, self.path)
        if not self._salvage:
            self._check_version(info)
        if outdated(version):  # an earlier release's file: upgraded once, here
            if self.read_only:
                raise DataError(f"The gallery {self.path} was written by an earlier facenet and must be upgraded "
                                "once where it can be written; copy it to a folder you can write to and use the copy.")
            migrate(self._db, self.path)

    def _check_version(self, info: dict[str, str] | None = None) -> None:
        """DataError when the version record is not a number (a damaged gallery: whether this
        facenet reads it right cannot be told)."""
        if info is None:
            with self._sql("read"):
                info = self._info()
        version = info.get("version", "0")
        if not (version.isascii() and version.isdigit() and len(version) < 10):
            raise DataError(f"The version record of the gallery {self.path} is damaged ({version[:40]!r}), so "
                            f"facenet cannot tell whether it reads it right; {REBUILD_ADVICE.format(self.path)}")

    def check_integrity(self) -> None:
        self._check_version()

    def _info(self) -> dict[str, str]:
        return {str(key): str(value) for key, value in self._db.execute("SELECT key, value FROM info").fetchall()}

    # -- the model

    @property
    def model(self) -> GalleryModel | None:
        """The model of the faces in the gallery; None until the first face is added. DataError
        when its record is damaged, or missing while the gallery holds faces (their embeddings
        cannot be matched without knowing the model, nor may another model's join them)."""
        with self._sql("read"):
            info = self._info()
            has_faces = "model" not in info and self._db.execute("SELECT 1 FROM faces LIMIT 1").fetchone() is not None
        return model_from_info(info, self.path, has_faces)

    def bind(self, record: "ModelRecord", ref: str, flip: bool) -> GalleryModel:
        """Make `record` (with `flip`) the gallery's model, or check it is the one already there."""
        fingerprint = model_fingerprint(record)
        values = {"model": json.dumps(record.to_dict(), sort_keys=True), "model_ref": ref,
                  "fingerprint": fingerprint, "flip": "1" if flip else "0"}
        self._bind_rows(values)
        model = self.model
        self.check_model(record.name, record.align.to_dict(), record.embedding_dim, fingerprint, flip)
        return model

    def _bind_rows(self, values: dict[str, str]) -> None:
        """Write the model rows unless the gallery has a model (or faces: then its model record is
        missing, and `model` says so rather than binding whatever model this run uses)."""
        self._refuse_if_read_only()
        self._bound = dict(values)
        with self._sql("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                model_from_info(self._info(), self.path,
                            self._db.execute("SELECT 1 FROM faces LIMIT 1").fetchone() is not None)
                if "model" not in self._info():
                    self._db.executemany("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", values.items())
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise read_only_error(self.path)

    def check_model(self, name: str, align: dict, dim: int, fingerprint: str | None, flip: bool | None) -> None:
        """Refuse faces of another model, alignment or flip setting than the gallery's."""
        refuse_other_model(self.model, self.location, name, align, dim, fingerprint, flip)

    # -- reading

    def people(self) -> list[tuple[str, int]]:
        """(name, number of faces) per person, sorted by name."""
        with self._sql("read"):
            return [(name, count) for name, count in self._db.execute(
                "SELECT p.name, count(f.id) FROM people p LEFT JOIN faces f ON f.person_id = p.id "
                "GROUP BY p.id ORDER BY p.name")]

    def faces(self, person: str | None = None) -> list[Face]:
        query = ("SELECT f.id, p.name, f.source, f.image_sha256, f.box_left, f.box_top, f.box_right, f.box_bottom, "
                 "f.added FROM faces f JOIN people p ON p.id = f.person_id")
        args: tuple = ()
        if person is not None:
            keys = name_keys(person)
            query += f" WHERE p.name IN ({','.join('?' * len(keys))})"
            args = tuple(keys)
        with self._sql("read"):
            rows = self._db.execute(query + " ORDER BY f.id", args).fetchall()
        return [Face(r[0], r[1], r[2], r[3], None if r[4] is None else (r[4], r[5], r[6], r[7]), r[8]) for r in rows]

    def faces_by_id(self, face_ids: Iterable[int]) -> dict[int, Face]:
        """The faces with these ids (ids not in the gallery are left out)."""
        wanted = sorted({int(i) for i in face_ids if valid_face_id(int(i))})  # SQLite cannot even ask for others
        found: dict[int, Face] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            query = ("SELECT f.id, p.name, f.source, f.image_sha256, f.box_left, f.box_top, f.box_right, f.box_bottom, "
                     f"f.added FROM faces f JOIN people p ON p.id = f.person_id WHERE f.id IN ({','.join('?' * len(chunk))})")
            with self._sql("read"):
                for r in self._db.execute(query, chunk):
                    found[r[0]] = Face(r[0], r[1], r[2], r[3], None if r[4] is None else (r[4], r[5], r[6], r[7]), r[8])
        return found

    def __len__(self) -> int:
        with self._sql("read"):
            return self._db.execute("SELECT count(*) FROM faces").fetchone()[0]

    def has_image(self, image_sha256: str) -> bool:
        with self._sql("read"):
            row = self._db.execute("SELECT 1 FROM faces WHERE image_sha256 = ?", (image_sha256,)).fetchone()
        return row is not None

    def enrolment(self) -> Enrolment:
        """Every face as arrays (people sorted by name); DataError for an empty gallery."""
        model = self.model
        with self._sql("read"):
            rows = self._db.execute("SELECT f.id, p.name, f.embedding FROM faces f JOIN people p "
                                    "ON p.id = f.person_id ORDER BY p.name, f.id").fetchall()
        return enrolment_of(rows, model, self.location)

    # -- writing

    def add_face(self, person: str, embedding: np.ndarray, source: str, image_sha256: str,
                 box: tuple[int, int, int, int] | None = None) -> int | None:
        """Enrol one face in its own transaction; its id, or None when that image is in already."""
        ids = self.add_faces([(person, embedding, source, image_sha256, box)])
        return ids[0]

    def add_faces(self, rows: Iterable[tuple[str, np.ndarray, str, str, tuple | None]]) -> list[int | None]:
        """Enrol faces in one transaction: all land or none. None for an image that is in already.
        A new gallery's first faces make its file (`_first_commit`)."""
        rows = list(rows)
        with self._lock:
            model = self.model
            if model is None:
                raise UsageError("Bind the gallery to a model (bind) before adding faces.")
            if self._new:
                if not rows:
                    return []
                ids = self._first_commit(rows, model)
                if ids is not None:
                    return ids
                model = self.model  # another run made the gallery meanwhile: the faces go into theirs
            return self._insert_faces(rows, model)

    def _insert_faces(self, rows: list, model: GalleryModel) -> list[int | None]:
        ids: list[int | None] = []
        with self._transaction() as pending:
            for person, embedding, source, sha, box in rows:
                vector = np.asarray(embedding, dtype="<f4").reshape(-1)
                if vector.shape[0] != model.dim or not np.isfinite(vector).all():
                    raise DataError(f"The embedding of {source} is not a finite {model.dim}-d vector.")
                person_id = self._person_id(normalise_name(person), create=True)
                left, top, right, bottom = box if box is not None else (None,) * 4
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO faces(person_id, embedding, source, image_sha256, box_left, box_top, "
                    "box_right, box_bottom, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (person_id, vector.tobytes(), source, sha, left, top, right, bottom, time.time()))
                added = cursor.lastrowid if cursor.rowcount == 1 else None
                ids.append(added)
                if added is not None:
                    pending.added[added] = vector.astype(np.float32)
        return ids

    def _first_commit(self, rows: list, model: GalleryModel) -> list[int | None] | None:
        """Enrol a new gallery's first faces: commit them to the gallery in memory, copy it to a
        temporary file beside the path and link that into place, so the file appears whole with
        its first faces or not at all. Their ids; None when another run made the gallery meanwhile
        (link refuses to replace it): this connection is then theirs, bound and checked, and the
        faces are still to be added."""
        ids = self._insert_faces(rows, model)
        if self._materialise():
            return ids
        self.changes = GalleryChanges()
        self._db.close()
        self._new = False
        self._open_file(create=True)
        bound = self._bound or {}
        self._bind_rows(bound)
        record = json.loads(bound["model"])
        self.check_model(record["name"], record["align"], int(record["embedding_dim"]), bound["fingerprint"],
                         bound["flip"] == "1")
        return None

    def _materialise(self) -> bool:
        """Write the in-memory gallery to its path (see `_first_commit`); False when the path was
        taken meanwhile. On success this connection is the file's."""
        if not write_new_file(self._db, self.path):
            return False
        memory = self._db
        self._new = False
        self._open_file(create=True)
        memory.close()
        return True

    def _person_id(self, name: str, create: bool) -> int | None:
        row = self._db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return row[0]
        if not create:
            return None
        return self._db.execute("INSERT INTO people(name, added) VALUES (?, ?)", (name, time.time())).lastrowid

    def _drop_empty_people(self) -> None:
        self._db.execute("DELETE FROM people WHERE id NOT IN (SELECT DISTINCT person_id FROM faces)")

    def _write(self, fn: Callable[[GalleryChanges], int]) -> int:
        with self._transaction() as pending:
            result = fn(pending)
        return result

    @contextmanager
    def _transaction(self):
        """One write transaction: bumps the generation and, once committed, records its changes
        in `self.changes` (yields the pending GalleryChanges to fill with added/removed faces)."""
        pending = GalleryChanges()
        self._refuse_if_read_only()
        with self._sql("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                info = self._info()
                generation = max(generation_in(info), 0)
                before = self._state_in(info) if self.changes.start is None else None
                yield pending
                self._drop_empty_people()
                if "gallery_id" not in info:  # a gallery made before galleries had ids
                    self._db.execute("INSERT INTO info(key, value) VALUES ('gallery_id', ?)", (uuid.uuid4().hex,))
                # A fresh revision with every write: a copy of the gallery changed apart from this one
                # may reach the same generation, count and largest face id, never the same revision.
                self._db.executemany("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)",
                                     (("generation", str(generation + 1)), ("revision", uuid.uuid4().hex)))
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._writes += 1
        changes = self.changes
        if changes.start is None:
            changes.start = before
        elif generation != changes.end:
            changes.contiguous = False
        changes.end = generation + 1
        for face_id in pending.removed:
            if changes.added.pop(face_id, None) is None:
                changes.removed.add(face_id)
        changes.added.update(pending.added)

    # -- the state an index is checked against

    def _state_in(self, info: dict[str, str]) -> GalleryState:
        count, max_id = self._db.execute("SELECT count(*), coalesce(max(id), 0) FROM faces").fetchone()
        dim = 0
        if "model" in info:
            try:
                dim = int(json.loads(info["model"])["embedding_dim"])
            except (KeyError, ValueError, TypeError):
                dim = 0
        return GalleryState(info.get("gallery_id", ""), generation_in(info), int(count), int(max_id),
                            info.get("fingerprint", ""), dim, info.get("revision", ""))

    def state(self) -> GalleryState:
        with self._sql("read"):
            return self._state_in(self._info())

    def snapshot(self) -> tuple[GalleryState, "Enrolment | None"]:
        """The state and every face, read in one transaction (so they agree); None for no faces."""
        with self._sql("read"):
            self._db.execute("BEGIN")
            try:
                state = self._state_in(self._info())
                enrolment = self.enrolment() if state.faces else None
            finally:
                self._db.execute("COMMIT")
        return state, enrolment

    def keep_index_current(self) -> str:
        """After this process's writes, patch or rebuild the search index beside the gallery (if
        there is one; see face_index.apply_changes). What was done."""
        if self.changes.end is None:
            return "none"
        try:
            with self._lock:
                done = apply_changes(index_path(self.path), self.changes, self.state(), self.snapshot)
        except (FacenetError, OSError):
            # e.g. a full disk: the gallery's writes stand; the index, now stale, is rebuilt by its next reader.
            done = "stale"
        self.changes = GalleryChanges()
        return done

    def remove_person(self, name: str) -> int:
        """Remove a person and all their faces; the number of faces removed."""
        def run(pending: GalleryChanges) -> int:
            person_id = self._existing_person(name)
            for face_id, sha in self._db.execute("SELECT id, image_sha256 FROM faces WHERE person_id = ?",
                                                 (person_id,)).fetchall():
                pending.removed.add(face_id)
                gone.append(sha)
            return self._db.execute("DELETE FROM faces WHERE person_id = ?", (person_id,)).rowcount

        gone: list[str] = []
        removed = self._write(run)
        remove_thumbs(self.path, gone)
        return removed

    def remove_face(self, face_id: int) -> str:
        """Remove one face; the name of the person it belonged to."""
        def run(pending: GalleryChanges) -> str:
            person = self._face_person(face_id)
            gone.extend(row[0] for row in self._db.execute("SELECT image_sha256 FROM faces WHERE id = ?",
                                                           (int(face_id),)).fetchall())
            self._db.execute("DELETE FROM faces WHERE id = ?", (int(face_id),))
            pending.removed.add(int(face_id))
            return person

        gone: list[str] = []
        person = self._write(run)
        remove_thumbs(self.path, gone)
        return person

    def move_face(self, face_id: int, new_name: str) -> tuple[str, str]:
        """Move a face to another person (made when new); (old name, new name)."""
        target = normalise_name(new_name)

        def run(pending: GalleryChanges):
            old = self._face_person(face_id)
            person_id = self._person_id(target, create=True)
            self._db.execute("UPDATE faces SET person_id = ? WHERE id = ?", (person_id, int(face_id)))
            return old, target

        return self._write(run)

    def rename_person(self, name: str, new_name: str) -> int:
        """All of a person's faces to `new_name` (merged into that person if they exist) in one transaction."""
        target = normalise_name(new_name)
        return self._write(lambda pending: self._db.execute(
            "UPDATE faces SET person_id = ? WHERE person_id = ?",
            (self._person_id(target, create=True), self._existing_person(name))).rowcount)

    def _existing_person(self, name: str) -> int:
        for person_id in (self._person_id(key, create=False) for key in name_keys(name)):
            if person_id is not None:
                return person_id
        raise UsageError(f"No one called {name!r} is in {self.path}; see `facenet gallery list {self.path}`.")

    def _face_person(self, face_id: int) -> str:
        row = None
        if valid_face_id(int(face_id)):  # beyond 64 bits SQLite cannot even be asked: no face has such an id
            row = self._db.execute("SELECT p.name FROM faces f JOIN people p ON p.id = f.person_id WHERE f.id = ?",
                                   (int(face_id),)).fetchone()
        if row is None:
            raise UsageError(f"No face with id {face_id} is in {self.path}; see "
                             f"`facenet gallery list {self.path} --with-faces`.")
        return row[0]

    # -- changes, as a long-running reader sees them

    def generation(self) -> tuple:
        """A token that changes with every commit to the gallery, this store's or another
        program's; cheap enough to ask twice a second (one PRAGMA unless something changed)."""
        with self._sql("read"):
            self._follow_file()
            data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if self._token is None or (data_version, self._writes) != self._seen:
                row = self._db.execute("SELECT value FROM info WHERE key = 'revision'").fetchone()
                self._token = (self._opened, row[0] if row else "")
                self._seen = (data_version, self._writes)
            return self._token

    def _follow_file(self) -> None:
        """Read the file at the path when it is not the one this connection reads: another program
        made it since this store opened an empty gallery in memory, or moved another file over it."""
        try:
            stat = self.path.stat()
        except OSError:
            return  # removed: keep answering from the open file
        if not self._new and self._file_id == (stat.st_dev, stat.st_ino):
            return
        previous, was_new = self._db, self._new
        self._new = False
        try:
            self._open_file(create=False)
        except BaseException:
            self._db, self._new = previous, was_new
            raise
        previous.close()
        self.changes = GalleryChanges()  # this process's writes went to the other file

    # -- nearest neighbours

    def neighbour_index(self, state: GalleryState, enrolment: Enrolment) -> IndexUse:
        """The index file beside the gallery when it matches `state`, else one built from
        `enrolment` and saved over it (store/face_index.py)."""
        return current_index(index_path(self.path), state, enrolment, save=not self._new)

    def nearest(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        state, enrolment = self.snapshot()
        if enrolment is None:
            queries = len(np.atleast_2d(vectors))
            return np.full((queries, k), -1, dtype=np.int64), np.full((queries, k), np.inf, dtype=np.float32)
        if len(enrolment.face_ids) < INDEX_MIN_FACES:  # below it an exact scan is as fast (face_index.py)
            return ExactIndex(enrolment).search(vectors, k)
        return self.neighbour_index(state, enrolment).index.search(vectors, k)

    # -- thumbnails, beside the file (store/thumbs.py)

    def save_thumbnail(self, image_sha256: str, jpeg: bytes) -> None:
        save_thumb(self.path, image_sha256, jpeg)

    def thumbnail(self, image_sha256: str) -> bytes | None:
        return read_thumb(self.path, image_sha256)

    def thumbnails(self) -> set[str]:
        return thumb_keys(self.path)


# The public name of the SQLite store (`from facenet_cli import Gallery`).
Gallery = SqliteGallery


def _is_path(location: str) -> bool:
    """Every location that is not a URL of some other backend (`scheme://...`) is a file path."""
    return "://" not in location or scheme_of(location) == "file"


def _open(location, *, create: bool, read_only: bool | None, timeout: float, salvage: bool) -> SqliteGallery:
    if isinstance(location, str) and location.startswith("file://"):
        location = location[len("file://"):]
    return SqliteGallery(location, create=create, timeout=timeout, salvage=salvage, read_only=read_only)


register_store(_is_path, _open)
