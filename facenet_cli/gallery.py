"""The gallery, the one home of its contract: people, their faces' embeddings and the model record
in one SQLite file.

Layout (stdlib sqlite3, WAL journal so that readers such as `identify` or a web server read while
`gallery add` writes; every write is a transaction: `gallery add` enrols a batch of faces in
one, so a crash loses at most the batch in flight):

- `info(key, value)`: `format` = "facenet-gallery", `version`, `model` (the model record as JSON),
  `model_ref` (the catalogue name or checkpoint path to load it again), `fingerprint` (SHA-256 of
  the weights), `flip` (1 when embeddings average the mirror image), `created`, `gallery_id` (a
  random id) and `generation` (bumped by every write transaction: what the search index beside
  the gallery, facenet_cli/face_index.py, checks it is current against).
- `people(id, name UNIQUE, added)`: names NFC-normalised; no `/`, `\\`, `..`, control characters.
- `faces(id, person_id, embedding float32 BLOB, source, image_sha256 UNIQUE, box_*, added)`.

Adding a photo hashes it first: an image already in the gallery is never embedded again, and the
same image is refused twice (the UNIQUE column settles races between two `gallery add` runs).
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import unicodedata
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from .errors import BadImage, DataError, FacenetError, MultipleFaces, NoFace, SpecMismatch, UsageError
from .hub import file_sha256

if TYPE_CHECKING:  # annotations only
    from .align import AlignedFace
    from .catalogue import ModelRecord
    from .embed import Embedder

FORMAT = "facenet-gallery"
VERSION = 1
# Seconds a writer waits for another one before the gallery counts as locked.
DEFAULT_TIMEOUT = 30.0
# Reserved: `identify` answers "unknown", so no enrolled person may be called that.
RESERVED_NAMES = {"unknown"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id),
    embedding BLOB NOT NULL,
    source TEXT NOT NULL,
    image_sha256 TEXT NOT NULL UNIQUE,
    box_left INTEGER, box_top INTEGER, box_right INTEGER, box_bottom INTEGER,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_person ON faces(person_id);
"""

# Per-input outcomes of `gallery add`; every input ends in exactly one.
ADD_STATUSES = (
    "added",           # a face was enrolled
    "already-in",      # this very image (same SHA-256) is in the gallery already: not embedded again
    "no-face",         # no face found
    "multiple-faces",  # several faces in a known person's photo: none enrolled (use --faces largest)
    "unreadable",      # not an image, corrupt, empty
    "bad-name",        # the person's name is refused
)


def normalise_name(name: str) -> str:
    """The NFC form of a person's name, or UsageError with the reason it is refused."""
    problem = name_problem(name)
    if problem:
        raise UsageError(f"The name {name!r} is refused: {problem}.")
    return unicodedata.normalize("NFC", name.strip())


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a person's name, or None."""
    text = unicodedata.normalize("NFC", name).strip()
    if not text:
        return "a name cannot be empty"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        return "it holds a line break or another control character"
    if "/" in text or "\\" in text:
        return "it holds a slash, which would make it a path"
    if ".." in text or text == ".":
        return "it holds '..' or is '.', which would make it a path"
    if text.casefold() in RESERVED_NAMES:
        return "'unknown' is what identify answers for strangers, so no one can be enrolled under it"
    return None


def model_fingerprint(record: "ModelRecord") -> str:
    """What tells one model's embeddings from another's: the checksum of its weights."""
    return record.weights.sha256 if record.weights is not None else f"untrained:{record.architecture}"


@dataclass(frozen=True)
class GalleryModel:
    """The model whose embeddings a gallery holds."""

    name: str
    ref: str
    fingerprint: str
    align: dict
    dim: int
    flip: bool
    record: dict

    def describe(self) -> str:
        return f"{self.name} ({self.align.get('name')} at {self.align.get('size')} px{', flip' if self.flip else ''})"


@dataclass(frozen=True)
class Face:
    id: int
    person: str
    source: str
    image_sha256: str
    box: tuple[int, int, int, int] | None
    added: float


@dataclass
class Enrolment:
    """The gallery's faces as arrays, ready to match against."""

    embeddings: np.ndarray  # (F, D) float32, unit rows
    person_index: np.ndarray  # (F,) index into `names`
    names: list[str]  # one per person, sorted
    face_ids: np.ndarray  # (F,)
    model: GalleryModel

    @property
    def size(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class GalleryState:
    """What a search index records of the gallery it was built from (face_index.py)."""

    gallery_id: str
    generation: int
    faces: int
    max_face_id: int
    fingerprint: str
    dim: int


@dataclass
class GalleryChanges:
    """This process's writes to a gallery since it was opened, so an index can be patched:
    `start` is the state before the first write, `end` the generation after the last;
    `contiguous` is False when another writer's transaction came in between."""

    start: GalleryState | None = None
    end: int | None = None
    added: dict[int, np.ndarray] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    contiguous: bool = True


@dataclass
class AddOutcome:
    input: str
    status: str
    person: str = ""
    face_id: int | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return {"input": self.input, "status": self.status, "person": self.person,
                "face_id": self.face_id, "detail": self.detail}


@dataclass
class AddReport:
    gallery: Path
    outcomes: list[AddOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in ADD_STATUSES}
        for outcome in self.outcomes:
            counts[outcome.status] += 1
        return counts

    def to_dict(self) -> dict:
        return {"gallery": str(self.gallery), "inputs": len(self.outcomes), "counts": self.counts(),
                "seconds": round(self.seconds, 3), "outcomes": [o.to_dict() for o in self.outcomes]}


class Gallery:
    """One gallery file. `Gallery(path)` opens an existing one; `Gallery(path, create=True)` makes
    it when missing. Use as a context manager, or call `close()`."""

    def __init__(self, path: str | os.PathLike, create: bool = False, timeout: float = DEFAULT_TIMEOUT):
        self.path = Path(path)
        self.changes = GalleryChanges()
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a folder; a gallery is one file, e.g. people.gallery.")
        exists = self.path.exists()
        if not exists and not create:
            raise UsageError(f"No gallery at {self.path}; create one with `facenet gallery add {self.path} KNOWN/`.")
        if not exists:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"Cannot create the folder of {self.path} ({exc.strerror}); "
                                 "choose another path.") from None
        try:
            # isolation_level=None: we open every transaction ourselves (BEGIN IMMEDIATE for writes).
            self._db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise DataError(f"Cannot open the gallery {self.path} ({exc}); check the path and its "
                            "permissions.") from None
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            with self._sql("open"):
                if not exists or self._is_blank():
                    self._create()
                else:
                    self._check_format()
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sql(self, doing: str):
        return _translate_errors(self.path, doing)

    def _is_blank(self) -> bool:
        return self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0

    def _create(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory: still correct, less concurrent
            self._db.execute("PRAGMA journal_mode = DELETE")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # One statement at a time: executescript would commit the open transaction first.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            for key, value in (("format", FORMAT), ("version", str(VERSION)), ("created", str(time.time())),
                               ("gallery_id", uuid.uuid4().hex), ("generation", "0")):
                self._db.execute("INSERT OR IGNORE INTO info(key, value) VALUES (?, ?)", (key, value))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _check_format(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"info", "people", "faces"} <= tables:
            raise DataError(f"{self.path} is an SQLite database but not a facenet gallery; give a gallery file "
                            "or a new path to create one.")
        info = self._info()
        if info.get("format") != FORMAT:
            raise DataError(f"{self.path} is an SQLite database but not a facenet gallery; give a gallery file "
                            "or a new path to create one.")
        if int(info.get("version", "0")) > VERSION:
            raise DataError(f"{self.path} was written by a newer facenet (gallery version {info['version']}); "
                            "upgrade facenet to read it.")

    def _info(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM info").fetchall())

    # -- the model

    @property
    def model(self) -> GalleryModel | None:
        """The model of the faces in the gallery; None until the first face is added."""
        with self._sql("read"):
            info = self._info()
        if "model" not in info:
            return None
        try:
            record = json.loads(info["model"])
            return GalleryModel(name=record["name"], ref=info["model_ref"], fingerprint=info["fingerprint"],
                                align=record["align"], dim=int(record["embedding_dim"]), flip=info["flip"] == "1",
                                record=record)
        except (KeyError, ValueError, TypeError):
            raise DataError(f"The model record in {self.path} is damaged; export what you can with "
                            "`facenet gallery export` and build a new gallery.") from None

    def bind(self, record: "ModelRecord", ref: str, flip: bool) -> GalleryModel:
        """Make `record` (with `flip`) the gallery's model, or check it is the one already there."""
        fingerprint = model_fingerprint(record)
        with self._sql("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if "model" not in self._info():
                    values = {"model": json.dumps(record.to_dict(), sort_keys=True), "model_ref": ref,
                              "fingerprint": fingerprint, "flip": "1" if flip else "0"}
                    self._db.executemany("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", values.items())
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        model = self.model
        self.check_model(record.name, record.align.to_dict(), record.embedding_dim, fingerprint, flip)
        return model

    def check_model(self, name: str, align: dict, dim: int, fingerprint: str | None, flip: bool | None) -> None:
        """Refuse faces of another model, alignment or flip setting than the gallery's."""
        model = self.model
        if model is None:
            return
        other = f"{name} ({align.get('name')} at {align.get('size')} px{', flip' if flip else ''})"
        if align != model.align:
            raise SpecMismatch(f"{self.path} holds faces aligned with {model.align.get('name')} at "
                               f"{model.align.get('size')} px for {model.name}, not {align.get('name')} at "
                               f"{align.get('size')} px; use another gallery for {name}.")
        if dim != model.dim or (fingerprint is not None and fingerprint != model.fingerprint):
            raise SpecMismatch(f"{self.path} holds faces of {model.describe()}, not of {other}; embeddings of two "
                               "models cannot be compared, so use another gallery.")
        if flip is not None and flip != model.flip:
            want = "--flip" if model.flip else "--no-flip"
            raise SpecMismatch(f"{self.path} holds faces of {model.describe()}, embedded "
                               f"{'with' if model.flip else 'without'} the mirror average; use {want}.")

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
            query += " WHERE p.name = ?"
            args = (unicodedata.normalize("NFC", person),)
        with self._sql("read"):
            rows = self._db.execute(query + " ORDER BY f.id", args).fetchall()
        return [Face(r[0], r[1], r[2], r[3], None if r[4] is None else (r[4], r[5], r[6], r[7]), r[8]) for r in rows]

    def faces_by_id(self, face_ids: Iterable[int]) -> dict[int, Face]:
        """The faces with these ids (ids not in the gallery are left out)."""
        wanted = sorted({int(i) for i in face_ids})
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
        if not rows or model is None:
            raise DataError(f"The gallery {self.path} holds no faces yet; add some with "
                            f"`facenet gallery add {self.path} KNOWN/`.")
        names = sorted({r[1] for r in rows})
        index = {n: i for i, n in enumerate(names)}
        try:
            embeddings = np.stack([np.frombuffer(r[2], dtype="<f4") for r in rows]).astype(np.float32)
        except ValueError:
            raise DataError(f"Some embeddings in {self.path} are damaged (wrong length); remove those faces or "
                            "rebuild the gallery.") from None
        if embeddings.shape[1] != model.dim or not np.isfinite(embeddings).all():
            raise DataError(f"Some embeddings in {self.path} are damaged; rebuild the gallery.")
        return Enrolment(embeddings, np.array([index[r[1]] for r in rows]), names,
                         np.array([r[0] for r in rows]), model)

    # -- writing

    def add_face(self, person: str, embedding: np.ndarray, source: str, image_sha256: str,
                 box: tuple[int, int, int, int] | None = None) -> int | None:
        """Enrol one face in its own transaction; its id, or None when that image is in already."""
        ids = self.add_faces([(person, embedding, source, image_sha256, box)])
        return ids[0]

    def add_faces(self, rows: Iterable[tuple[str, np.ndarray, str, str, tuple | None]]) -> list[int | None]:
        """Enrol faces in one transaction: all land or none. None for an image that is in already."""
        model = self.model
        if model is None:
            raise UsageError("Bind the gallery to a model (Gallery.bind) before adding faces.")
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
        with self._sql("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                info = self._info()
                generation = int(info.get("generation", "0"))
                before = self._state_in(info) if self.changes.start is None else None
                yield pending
                self._drop_empty_people()
                if "gallery_id" not in info:  # a gallery made before galleries had ids
                    self._db.execute("INSERT INTO info(key, value) VALUES ('gallery_id', ?)", (uuid.uuid4().hex,))
                self._db.execute("INSERT OR REPLACE INTO info(key, value) VALUES ('generation', ?)",
                                 (str(generation + 1),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
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
        return GalleryState(info.get("gallery_id", ""), int(info.get("generation", "0")), int(count), int(max_id),
                            info.get("fingerprint", ""), dim)

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
        from .face_index import apply_changes

        try:
            done = apply_changes(self, self.changes)
        except (FacenetError, OSError):
            # e.g. a full disk: the gallery's writes stand; the index, now stale, is rebuilt by its next reader.
            done = "stale"
        self.changes = GalleryChanges()
        return done

    def remove_person(self, name: str) -> int:
        """Remove a person and all their faces; the number of faces removed."""
        key = unicodedata.normalize("NFC", name.strip())

        def run(pending: GalleryChanges) -> int:
            person_id = self._person_id(key, create=False)
            if person_id is None:
                raise UsageError(f"No one called {name!r} is in {self.path}; see `facenet gallery list {self.path}`.")
            pending.removed.update(r[0] for r in self._db.execute("SELECT id FROM faces WHERE person_id = ?",
                                                                  (person_id,)))
            return self._db.execute("DELETE FROM faces WHERE person_id = ?", (person_id,)).rowcount

        return self._write(run)

    def remove_face(self, face_id: int) -> str:
        """Remove one face; the name of the person it belonged to."""
        def run(pending: GalleryChanges) -> str:
            person = self._face_person(face_id)
            self._db.execute("DELETE FROM faces WHERE id = ?", (face_id,))
            pending.removed.add(int(face_id))
            return person

        return self._write(run)

    def move_face(self, face_id: int, new_name: str) -> tuple[str, str]:
        """Move a face to another person (made when new); (old name, new name)."""
        target = normalise_name(new_name)

        def run(pending: GalleryChanges):
            old = self._face_person(face_id)
            person_id = self._person_id(target, create=True)
            self._db.execute("UPDATE faces SET person_id = ? WHERE id = ?", (person_id, face_id))
            return old, target

        return self._write(run)

    def _face_person(self, face_id: int) -> str:
        row = self._db.execute("SELECT p.name FROM faces f JOIN people p ON p.id = f.person_id WHERE f.id = ?",
                               (int(face_id),)).fetchone()
        if row is None:
            raise UsageError(f"No face with id {face_id} is in {self.path}; see "
                             f"`facenet gallery list {self.path} --faces`.")
        return row[0]


class _translate_errors:
    """SQLite's exceptions as one-sentence typed errors."""

    def __init__(self, path: Path, doing: str):
        self.path, self.doing = path, doing

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, sqlite3.Error):
            return False
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            raise FacenetError(f"The gallery {self.path} is locked by another program that is writing it; "
                               "wait for it to finish and rerun (nothing in the gallery was lost).") from None
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            raise DataError(f"{self.path} is not a readable gallery (the file is damaged or not an SQLite "
                            "database); give a gallery file, or a new path to create one.") from None
        if "readonly" in text or "read-only" in text:
            raise FacenetError(f"Cannot write the gallery {self.path} (it is read-only); choose a gallery you "
                               "can write to.") from None
        if "disk is full" in text or "database or disk is full" in text:
            raise FacenetError(f"The disk is full while writing {self.path}; free some space and rerun "
                               "(the faces added before are kept).") from None
        if "unable to open" in text:
            raise DataError(f"Cannot open the gallery {self.path}; check the path and its permissions.") from None
        raise DataError(f"The gallery {self.path} could not be {self.doing or 'used'} ({exc}).") from None


# ------------------------------------------------------------------ adding from photos or reps

def plan_known_folder(folder: Path) -> list[tuple[str, str]]:
    """(person folder name, image path) for `KNOWN/<person>/<image>` (deeper files count for the person too)."""
    from .aligned import looks_like_image

    items: list[tuple[str, str]] = []
    for person_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(person_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and looks_like_image(name):
                    items.append((person_dir.name, str(Path(dirpath, name))))
    return items


def is_reps_folder(path: Path) -> bool:
    return path.is_dir() and (path / "labels.csv").is_file()


def add_to_gallery(gallery_path: str | os.PathLike, inputs: list[str | os.PathLike], *, name: str | None = None,
                   model: str | None = None, flip: bool | None = None, device: str = "auto",
                   detector: str = "hog", upsample: int | str = "auto", faces: str = "skip-multi",
                   fallback: str = "none", batch_size: int = 32,
                   on_start: Callable[[int], None] | None = None,
                   on_advance: Callable[[int], None] | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> AddReport:
    """`facenet gallery add`: enrol photos (`--name NAME IMG...`), a folder per person (`KNOWN/`),
    or a `represent` output (a folder with labels.csv). Creates the gallery when missing.

    `model`/`flip` default to the gallery's own (for a new gallery: dlib-resnet.v1 with flip, what
    the identification operating points were calibrated with). Every input gets one outcome.
    """
    started = time.perf_counter()
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UsageError("Give a folder with one subfolder per person, a represent output, or --name NAME and photos.")
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path} does not exist; check the path.")
    reps_inputs = [p for p in paths if is_reps_folder(p)]
    if reps_inputs and (len(reps_inputs) != len(paths) or name is not None):
        raise UsageError("A represent output (a folder with labels.csv) is added on its own, without --name or photos.")
    if faces not in ("skip-multi", "largest", "center", "center-only"):
        raise UsageError("--faces for gallery add must be skip-multi (the default: enrol no face of a photo with "
                         f"several), largest, center or center-only, not {faces}.")
    if name is not None:
        person = normalise_name(name)
        items = []
        for path in paths:
            if path.is_dir():
                raise UsageError(f"{path} is a folder; with --name give photos of that person, or drop --name to "
                                 "add a folder with one subfolder per person.")
            items.append((person, str(path)))
    elif not reps_inputs:
        items = []
        for path in paths:
            if not path.is_dir():
                raise UsageError(f"{path} is a photo; say whose it is with --name NAME, or give a folder with one "
                                 "subfolder per person.")
            found = plan_known_folder(path)
            if not found:
                raise UsageError(f"{path} has no subfolder of photos; give a folder with one subfolder per person "
                                 "(KNOWN/<name>/<photo>).")
            items += found

    with Gallery(gallery_path, create=True, timeout=timeout) as gallery:
        report = AddReport(gallery.path)
        if reps_inputs:
            for folder in reps_inputs:
                report.outcomes += _add_reps(gallery, folder, model, flip, on_start, on_advance)
        else:
            report.outcomes += _add_photos(gallery, items, model=model, flip=flip, device=device, detector=detector,
                                           upsample=upsample, faces=faces, fallback=fallback, batch_size=batch_size,
                                           on_start=on_start, on_advance=on_advance)
        gallery.keep_index_current()
    report.seconds = time.perf_counter() - started
    return report


def resolve_for(gallery: Gallery, model: str | None, flip: bool | None) -> tuple["ModelRecord", str, bool]:
    """The model record and flip to embed with: the gallery's, checked against --model/--flip if given."""
    from .catalogue import DEFAULT_MODEL
    from .hub import resolve_model

    bound = gallery.model
    ref = model or (bound.ref if bound else DEFAULT_MODEL)
    record = resolve_model(ref)
    use_flip = flip if flip is not None else (bound.flip if bound else True)
    gallery.check_model(record.name, record.align.to_dict(), record.embedding_dim, model_fingerprint(record), use_flip)
    return record, ref, use_flip


def _add_photos(gallery: Gallery, items: list[tuple[str, str]], *, model, flip, device, detector, upsample, faces,
                fallback, batch_size, on_start, on_advance) -> list[AddOutcome]:
    record, ref, use_flip = resolve_for(gallery, model, flip)
    if on_start:
        on_start(len(items))
    engine: dict = {}

    def load(part: str):
        """The embedder or the aligner, each built the first time a photo needs it (an aligned
        crop needs no detector, an image already in the gallery neither)."""
        if part not in engine:
            if part == "embedder":
                from .embed import Embedder

                engine[part] = Embedder(record, device=device, flip=use_flip, batch_size=batch_size)
            else:
                from .align import FaceAligner
                from .detect import parse_upsample

                engine[part] = FaceAligner(record.align, detector=detector, upsample=parse_upsample(upsample),
                                           faces=faces, fallback=fallback)
        return engine[part]

    bad_names: dict[str, str] = {}
    results: list[AddOutcome | None] = [None] * len(items)
    waiting: list[tuple[int, _FaceToEnrol]] = []  # aligned, for the network's next batch
    in_flight: list[tuple[list[tuple[int, _FaceToEnrol]], Future]] = []  # one batch at most
    cores = os.cpu_count() or 1
    threads_before = None

    def settle(index: int, outcome: AddOutcome) -> None:
        results[index] = outcome
        if on_advance:
            on_advance(1)

    def send_waiting(last: bool = False) -> None:
        """Hand the waiting faces to the network as one batch, in a thread, while this one
        aligns the next photos (on the cores the alignment leaves; on all of them for the last)."""
        nonlocal threads_before
        if not waiting:
            return
        embedder = load("embedder")
        if threads_before is None:
            import torch

            threads_before = torch.get_num_threads()
        enrol_in_flight()
        batch = list(waiting)
        waiting.clear()
        threads = cores if last else max(1, cores - 1)
        in_flight.append((batch, network.submit(_embed_with_threads, embedder, [f.face.image for _, f in batch],
                                                threads)))

    def enrol_in_flight() -> None:
        """Enrol the batch in flight in one transaction once embedded (here: SQLite connections
        stay in their own thread). A kill loses at most that batch and the one aligning; a rerun
        finds the rest in the gallery already."""
        if not in_flight:
            return
        batch, future = in_flight.pop()
        vectors = future.result()
        embedder = load("embedder")
        if gallery.model is None:
            gallery.bind(embedder.record, _ref_of(embedder), embedder.flip)
        ids = gallery.add_faces([(face.person, vector, face.path, face.sha, face.box)
                                 for (_, face), vector in zip(batch, vectors)])
        for (index, face), face_id in zip(batch, ids):
            settle(index, face.outcome(face_id))

    network = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facenet-gallery-network")
    try:
        for index, (person, path) in enumerate(items):
            pending_shas = {f.sha for _, f in waiting} | {f.sha for batch, _ in in_flight for _, f in batch}
            prepared = _prepare_photo(gallery, person, path, load, bad_names, pending_shas)
            if isinstance(prepared, AddOutcome):
                settle(index, prepared)
                continue
            waiting.append((index, prepared))
            if len(waiting) >= batch_size:
                send_waiting()
        send_waiting(last=True)
        enrol_in_flight()
    finally:
        network.shutdown(wait=True, cancel_futures=True)
        if threads_before is not None:
            import torch

            torch.set_num_threads(threads_before)
    return [outcome for outcome in results if outcome is not None]


def _embed_with_threads(embedder: "Embedder", images: list, threads: int) -> np.ndarray:
    import torch

    torch.set_num_threads(threads)  # in this thread: OpenMP thread counts are per calling thread
    return embedder.embed(images)


@dataclass
class _FaceToEnrol:
    """A photo's face, aligned and waiting for the network."""

    path: str
    person: str
    sha: str
    face: "AlignedFace"

    @property
    def box(self) -> tuple[int, int, int, int]:
        b = self.face.box
        return (b.left, b.top, b.right, b.bottom)

    def outcome(self, face_id: int | None) -> AddOutcome:
        if face_id is None:  # another run added the same image meanwhile
            return AddOutcome(self.path, "already-in", self.person, detail="this image is in the gallery already")
        detail = "no face found; the centre of the photo was enrolled (--fallback center)" if self.face.fallback else ""
        return AddOutcome(self.path, "added", self.person, face_id, detail)


def _prepare_photo(gallery: Gallery, person: str, path: str, load, bad_names: dict[str, str],
                   waiting_shas: set[str]) -> "AddOutcome | _FaceToEnrol":
    """A photo's final outcome when it will not be enrolled, else its aligned face."""
    from .images import read_rgb

    if person not in bad_names:
        bad_names[person] = name_problem(person) or ""
    if bad_names[person]:
        return AddOutcome(path, "bad-name", person, detail=bad_names[person])
    person = unicodedata.normalize("NFC", person.strip())
    if not Path(path).is_file():  # a pipe or device named like a photo would block the hash forever
        return AddOutcome(path, "unreadable", person, detail="is not a regular file")
    try:
        sha = file_sha256(path)
    except OSError as exc:
        return AddOutcome(path, "unreadable", person, detail=f"cannot be read ({exc.strerror or exc})")
    if sha in waiting_shas or gallery.has_image(sha):
        return AddOutcome(path, "already-in", person, detail="this image is in the gallery already")
    try:
        rgb = read_rgb(path)
    except BadImage as exc:
        return AddOutcome(path, "unreadable", person, detail=exc.reason)
    crop = _aligned_crop(Path(path), rgb, load("embedder").record)
    try:
        found = [crop] if crop is not None else load("aligner").align(rgb)
    except NoFace:
        return AddOutcome(path, "no-face", person, detail="no face found")
    except MultipleFaces as exc:
        return AddOutcome(path, "multiple-faces", person,
                          detail=f"{exc}; none enrolled (use --faces largest or center to enrol one)")
    return _FaceToEnrol(str(path), person, sha, found[0])


def _aligned_crop(path: Path, rgb: np.ndarray, record: "ModelRecord"):
    """The image itself as the face when it is already a crop aligned for this model: it lies (or
    a link to it points) in a `facenet align` folder whose spec is the model's, at the model's size.
    Such crops (`facenet align` output, `facenet cluster --link` folders) are not detected again."""
    from .align import AlignedFace
    from .aligned import SPEC_FILE
    from .detect import FaceBox

    size = record.align.size
    if rgb.shape[:2] != (size, size):
        return None
    target = path.resolve()
    for root in (target.parent, target.parent.parent):
        if (root / SPEC_FILE).is_file():
            try:
                spec = _folder_spec(str(root), (root / SPEC_FILE).stat().st_mtime_ns)
            except (DataError, OSError):
                return None
            if spec == record.align:
                return AlignedFace(rgb, FaceBox(0, 0, size, size), np.zeros((0, 2), np.float32))
            return None
    return None


@lru_cache(maxsize=64)
def _folder_spec(root: str, spec_mtime_ns: int):
    """An aligned folder's spec, read once per folder (and again only if its file changes)."""
    from .aligned import AlignedFolder

    return AlignedFolder(root).spec()


def _ref_of(embedder: "Embedder") -> str:
    from .catalogue import CATALOGUE

    record = embedder.record
    if record.name in CATALOGUE and model_fingerprint(CATALOGUE[record.name]) == model_fingerprint(record):
        return record.name
    return record.weights.path if record.weights is not None and record.weights.path else record.name


def _add_reps(gallery: Gallery, folder: Path, model, flip, on_start, on_advance) -> list[AddOutcome]:
    """Enrol a `represent` output: person = each face's folder name; refuse another model's reps."""
    from .catalogue import ModelRecord
    from .reps import person_of, read_reps

    reps = read_reps(folder)
    meta_model = reps.meta.get("model")
    if not isinstance(meta_model, dict):
        raise DataError(f"{folder} has no meta.json naming the model that made it, so its embeddings cannot be "
                        "checked against the gallery's; represent the photos again with `facenet represent`.")
    try:
        record = ModelRecord.from_dict(meta_model)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"The model record in {folder}/meta.json is damaged; represent the photos again.") from None
    reps_flip = bool(reps.meta.get("flip", False))
    if flip is not None and flip != reps_flip:
        raise UsageError(f"{folder} was represented {'with' if reps_flip else 'without'} --flip; drop "
                         f"{'--no-flip' if reps_flip else '--flip'} or represent the photos again.")
    if model is not None:
        from .hub import resolve_model

        wanted = resolve_model(model)
        if model_fingerprint(wanted) != model_fingerprint(record):
            raise SpecMismatch(f"{folder} holds embeddings of {record.name}, not of {wanted.name}; represent the "
                               f"photos with --model {model} or drop --model.")
    gallery.check_model(record.name, record.align.to_dict(), record.embedding_dim, model_fingerprint(record), reps_flip)
    if reps.embeddings.shape[1] != record.embedding_dim:
        raise DataError(f"{folder} holds {reps.embeddings.shape[1]}-d embeddings but its model {record.name} makes "
                        f"{record.embedding_dim}-d ones; represent the photos again.")
    if gallery.model is None:
        from .catalogue import CATALOGUE

        ref = record.name if record.name in CATALOGUE else (record.weights.path if record.weights and
                                                            record.weights.path else record.name)
        gallery.bind(record, ref, reps_flip)
    if on_start:
        on_start(len(reps))
    outcomes: list[AddOutcome] = []
    pending: list[tuple[AddOutcome, tuple]] = []

    def flush():
        ids = gallery.add_faces([row for _, row in pending])
        for (outcome, _), face_id in zip(pending, ids):
            if face_id is None:
                outcome.status, outcome.detail = "already-in", "this face is in the gallery already"
            else:
                outcome.face_id = face_id
        if on_advance:
            on_advance(len(pending))
        pending.clear()

    seen: set[str] = set()
    for path, vector in zip(reps.paths, reps.embeddings):
        person = person_of(path)
        problem = name_problem(person)
        if problem:
            outcomes.append(AddOutcome(path, "bad-name", person, detail=problem))
            continue
        sha = _reps_face_sha(folder, path, vector)
        if sha in seen or gallery.has_image(sha):
            outcomes.append(AddOutcome(path, "already-in", person, detail="this face is in the gallery already"))
            continue
        seen.add(sha)
        outcome = AddOutcome(path, "added", unicodedata.normalize("NFC", person.strip()))
        outcomes.append(outcome)
        pending.append((outcome, (person, vector, path, sha, None)))
        if len(pending) >= 500:
            flush()
    if pending:
        flush()
    return outcomes


def _reps_face_sha(folder: Path, path: str, vector: np.ndarray) -> str:
    """The image's SHA-256 when its file is at hand (so a photo and its crop are not confused with
    others), else a digest of the embedding itself (`emb:`), which tells faces apart as well."""
    for candidate in (Path(path), folder / path):
        try:
            if candidate.is_file():
                return file_sha256(candidate)
        except OSError:
            pass
    return "emb:" + hashlib.sha256(np.asarray(vector, dtype="<f4").tobytes()).hexdigest()


# ------------------------------------------------------------------ export

def export_gallery(gallery_path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the gallery as OpenFace's representation folder (labels.csv, reps.csv, reps.npy, meta.json).

    Each face's path is its source when the source's folder is the person's name, else
    `<person>/<source file name>`, so reading the folder back gives every face its person.
    """
    from .reps import RepsWriter, person_of

    with Gallery(gallery_path) as gallery:
        enrolment = gallery.enrolment()
        by_id = {face.id: face for face in gallery.faces()}
    model = enrolment.model
    meta = {"model": model.record, "flip": model.flip, "gallery": str(Path(gallery_path))}
    with RepsWriter(out, len(enrolment.face_ids), model.dim, meta) as writer:
        for face_id, vector, person_i in zip(enrolment.face_ids, enrolment.embeddings, enrolment.person_index):
            person = enrolment.names[person_i]
            source = by_id[int(face_id)].source
            path = source if person_of(source) == person else f"{person}/{PurePath(source.replace(chr(92), '/')).name}"
            writer.add(path, person, vector)
    return len(enrolment.face_ids)


def gallery_summary(gallery_path: str | os.PathLike, with_faces: bool = False) -> dict:
    """`facenet gallery list`: the model, and each person's number of faces (and faces, if asked)."""
    with Gallery(gallery_path) as gallery:
        model = gallery.model
        people = gallery.people()
        summary = {
            "gallery": str(gallery.path),
            "model": model.name if model else None,
            "alignment": model.align.get("name") if model else None,
            "flip": model.flip if model else None,
            "people": [{"name": n, "faces": c} for n, c in people],
            "total_people": len(people),
            "total_faces": sum(c for _, c in people),
        }
        if with_faces:
            summary["faces"] = [{"id": f.id, "person": f.person, "source": f.source,
                                 "box": list(f.box) if f.box else None} for f in gallery.faces()]
    return summary


def remove_from_gallery(gallery_path: str | os.PathLike, target: str) -> dict:
    """`facenet gallery remove`: a person by name, or one face by its id (a number that is no one's name)."""
    with Gallery(gallery_path) as gallery:
        names = {n for n, _ in gallery.people()}
        key = unicodedata.normalize("NFC", target.strip())
        if key not in names and target.strip().isdigit():
            person = gallery.remove_face(int(target))
            gallery.keep_index_current()
            return {"removed_faces": 1, "person": person, "face_id": int(target)}
        count = gallery.remove_person(target)
        gallery.keep_index_current()
        return {"removed_faces": count, "person": key}


def move_in_gallery(gallery_path: str | os.PathLike, face_id: int, new_name: str) -> dict:
    """`facenet gallery move`: give a face to another (maybe new) person."""
    with Gallery(gallery_path) as gallery:
        old, new = gallery.move_face(int(face_id), new_name)
        gallery.keep_index_current()
    return {"face_id": int(face_id), "from": old, "to": new}

