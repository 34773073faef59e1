"""The gallery, the one home of its contract: people, their faces' embeddings and the model record
in one SQLite file.

Layout (stdlib sqlite3, WAL journal so that readers such as `identify` or a web server read while
`gallery add` writes; every write is a transaction: `gallery add` enrols a batch of faces in
one, so a crash loses at most the batch in flight):

- `info(key, value)`: `format` = "facenet-gallery", `version`, `model` (the model record as JSON),
  `model_ref` (the catalogue name or checkpoint path to load it again), `fingerprint` (SHA-256 of
  the weights), `flip` (1 when embeddings average the mirror image), `created`, `gallery_id` (a
  random id), `generation` (bumped by every write transaction) and `revision` (a random token
  replaced by every write transaction, so two copies of one gallery that were changed apart never
  look alike): what the search index beside the gallery, facenet_cli/store/face_index.py, checks it is
  current against.
- `people(id, name UNIQUE, added)`: names NFKC-normalised; no `/`, `\\`, `..`, control characters.
- `faces(id, person_id, embedding float32 BLOB, source, image_sha256 UNIQUE, box_*, added)`.

Adding a photo hashes it first: an image already in the gallery is never embedded again, and the
same image is refused twice (the UNIQUE column settles races between two `gallery add` runs).

The file appears with its first faces: until then a new gallery lives in memory, and its first
commit is copied to a temporary file linked into place, so a `gallery add` that fails or is killed
before any face lands leaves no file (that the next run would take for a gallery bound to a model).
A gallery the user cannot write to (a read-only file or folder) is opened read-only, so reading
commands work and writing ones say so in one sentence.
"""
from __future__ import annotations

import errno
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
from urllib.parse import quote

import numpy as np

from ..formats.aligned import printable_name
from ..errors import BadImage, DataError, FacenetError, MultipleFaces, NoFace, SpecMismatch, UsageError
from ..models.hub import file_sha256
from ..pipeline.photos import path_problem

if TYPE_CHECKING:  # annotations only
    from ..align.aligner import AlignedFace
    from ..models.catalogue import ModelRecord
    from ..nets.embedder import Embedder

FORMAT = "facenet-gallery"
VERSION = 1
# Seconds a writer waits for another one before the gallery counts as locked.
DEFAULT_TIMEOUT = 30.0
# Reserved: `identify` answers "unknown", so no enrolled person may be called that.
RESERVED_NAMES = {"unknown"}
# What works for a gallery whose info rows are damaged: its faces' photos are the source of truth,
# and `gallery list --faces` (which reads such a gallery) shows where each came from.
_REBUILD_ADVICE = ("list where its faces came from with `facenet gallery list {0} --faces` and add those photos "
                   "to a new gallery.")

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
    "duplicate",       # its embedding equals a face's in the gallery (a crop or export of it): not enrolled
    "no-face",         # no face found
    "multiple-faces",  # several faces in a known person's photo: none enrolled (use --faces largest)
    "unreadable",      # not an image, corrupt, empty, a special file or a broken link
    "bad-name",        # the person's name or the file's name (a control character) is refused
    "skipped",         # not read, as align: hidden, a link to a folder (not entered), not in a person's folder
)
# Two embeddings closer than this in every component are one face (the same crop embedded twice:
# batches differ by ~1e-7); two photos, even of one person, differ by orders of magnitude more.
SAME_FACE_TOLERANCE = 1e-6


def normalise_name(name: str) -> str:
    """The NFKC form of a person's name (so `ｕｎｋｎｏｗｎ` is `unknown`, `Ｇｒａｃｅ` is `Grace`), or
    UsageError with the reason it is refused."""
    problem = name_problem(name)
    if problem:
        raise UsageError(f"The name {name!r} is refused: {problem}.")
    return _nfkc(name)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a person's name, or None. Checked on the raw text (a line break at
    either end is refused, not stripped) and on its NFKC form (what is stored, and what a
    fullwidth or other compatibility spelling of `unknown`, `/` or `..` turns into)."""
    if not isinstance(name, str):
        return "a name must be text"
    if any(unicodedata.category(ch) in _CONTROL for ch in name):
        return "it holds a line break or another control character"
    text = _nfkc(name)
    if not text:
        return "a name cannot be empty"
    if any(unicodedata.category(ch) in _CONTROL for ch in text):
        return "it holds a line break or another control character"
    if "/" in text or "\\" in text:
        return "it holds a slash, which would make it a path"
    if ".." in text or text == ".":
        return "it holds '..' or is '.', which would make it a path"
    if _nfkc(text.casefold()) in RESERVED_NAMES:
        return "'unknown' is what identify answers for strangers, so no one can be enrolled under it"
    return None


# Control characters, format characters (zero-width, direction marks) and line/paragraph separators.
_CONTROL = ("Cc", "Cf", "Zl", "Zp")


def _nfkc(name: str) -> str:
    return unicodedata.normalize("NFKC", name).strip()


def _name_keys(name: str) -> list[str]:
    """The spellings a person may be stored under: NFKC (from now on), then NFC and as given
    (galleries written before names were NFKC-normalised)."""
    keys: list[str] = []
    for key in (_nfkc(name), unicodedata.normalize("NFC", name.strip()), name):
        if key not in keys:
            keys.append(key)
    return keys


# SQLite's INTEGER is a signed 64-bit number: no face id reaches this.
FACE_ID_LIMIT = 2 ** 63
_FACE_ID_DIGITS = 40  # longer runs of digits are not taken for ids (int() of thousands of digits is refused)


def parse_face_id(text: str) -> int | None:
    """The face id `text` spells, or None: ASCII digits only (not `+1`, `1_000`, `١٢` or
    fullwidth digits, which int() would take), surrounding blanks ignored. A number beyond the
    64-bit range is returned as it is: no face has it, so looking it up finds none
    (`valid_face_id` tells)."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or len(text) > _FACE_ID_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def valid_face_id(face_id: int) -> bool:
    """Whether `face_id` can be a face's id at all (0 <= id < 2**63)."""
    return isinstance(face_id, int) and 0 <= face_id < FACE_ID_LIMIT


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
    revision: str = ""  # replaced by every write: copies changed apart differ here, whatever else they share


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
    """One gallery file. `Gallery(path)` opens an existing one (read-only when the file or its
    folder cannot be written); `Gallery(path, create=True)` is for writing: a missing gallery is
    made by its first faces (until then it is empty, in memory), and a read-only one is refused.
    `salvage=True` (`gallery list`) lets a gallery whose version record is damaged be read.
    Use as a context manager, or call `close()`."""

    def __init__(self, path: str | os.PathLike, create: bool = False, timeout: float = DEFAULT_TIMEOUT, *,
                 salvage: bool = False):
        self.path = Path(path)
        self.changes = GalleryChanges()
        self.read_only = False
        self._timeout = timeout
        self._salvage = salvage
        self._new = False  # not on disk yet: the first commit of faces makes the file (_first_commit)
        self._bound: dict[str, str] | None = None  # the model rows this process bound (bind)
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a folder; a gallery is one file, e.g. people.gallery.")
        if not self.path.exists():
            if not create:
                raise UsageError(f"No gallery at {self.path}; create one with "
                                 f"`facenet gallery add {self.path} KNOWN/`.")
            self._check_can_create()
            self._new = True
            self._db = sqlite3.connect(":memory:", isolation_level=None)
            with self._sql("open"):
                self._create()
            return
        self._open_file(create)

    def _open_file(self, create: bool) -> None:
        real = self.path.resolve()  # SQLite keeps the -wal and -shm files beside a link's target
        folder_writable = os.access(real.parent, os.W_OK)
        self.read_only = not (folder_writable and os.access(real, os.W_OK))
        if self.read_only and create:
            raise self._read_only_error()
        # Read-only: SQLite may not write. In a folder it cannot write either, the -wal and -shm
        # files a WAL gallery needs cannot be made: read the file as immutable (nothing can be
        # writing it there), which needs neither, unless a -wal holds commits it would then miss.
        wal = real.with_name(real.name + "-wal")
        pending_wal = not folder_writable and wal.exists() and wal.stat().st_size > 0
        try:
            if self.read_only:
                uri = f"file:{quote(str(real))}?mode=ro" + ("" if folder_writable or pending_wal else "&immutable=1")
                self._db = sqlite3.connect(uri, uri=True, timeout=self._timeout, isolation_level=None)
            else:
                # isolation_level=None: we open every transaction ourselves (BEGIN IMMEDIATE for writes).
                self._db = sqlite3.connect(str(self.path), timeout=self._timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, exc, "opened") from None
        try:
            if pending_wal:
                try:
                    self._is_blank()
                except sqlite3.Error:
                    raise DataError(f"The gallery {self.path} has changes in {wal.name} that cannot be read in its "
                                    "read-only folder; copy both files to a folder you can write to and use the "
                                    "copy.") from None
            with self._sql("read"):
                self._db.execute("PRAGMA foreign_keys = ON")
                if self._is_blank():
                    if self.read_only:  # an empty file: an empty gallery, read in memory
                        self._db.close()
                        self._db = sqlite3.connect(":memory:", isolation_level=None)
                    self._create()
                else:
                    self._check_format()
        except BaseException:
            self._db.close()
            raise

    def _check_can_create(self) -> None:
        """Refuse now, before any work, a new gallery whose folder cannot be made or written."""
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise UsageError(f"Cannot create the gallery {self.path}: {folder} is a file, not a folder; "
                             "choose another path.")
        if not os.access(folder, os.W_OK):
            raise self._read_only_error(folder)

    def _read_only_error(self, folder: Path | None = None) -> FacenetError:
        from ..errors import WriteError

        where = folder if folder is not None else self.path
        try:
            on_read_only_disk = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
        except OSError:
            on_read_only_disk = False
        why = "is on a read-only file system" if on_read_only_disk else "is read-only"
        if folder is not None:
            return WriteError(f"Cannot create the gallery {self.path}: its folder {folder} {why}; choose a folder "
                              "you can write to.")
        return WriteError(f"The gallery {self.path} {why} (it can be listed, searched and exported, not changed); "
                          "copy it to a folder you can write to and change the copy.")

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
        self._use_wal()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # One statement at a time: executescript would commit the open transaction first.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            for key, value in (("format", FORMAT), ("version", str(VERSION)), ("created", str(time.time())),
                               ("gallery_id", uuid.uuid4().hex), ("generation", "0"),
                               ("revision", uuid.uuid4().hex)):
                self._db.execute("INSERT OR IGNORE INTO info(key, value) VALUES (?, ?)", (key, value))
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

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
        version = info.get("version", "0")
        if version.isascii() and version.isdigit() and len(version) < 10 and int(version) > VERSION:
            raise DataError(f"{self.path} was written by a newer facenet (gallery version {version}); "
                            "upgrade facenet to read it.")
        if not self._salvage:
            self._check_version(info)

    def _check_version(self, info: dict[str, str] | None = None) -> None:
        """DataError when the version record is not a number (a damaged gallery: whether this
        facenet reads it right cannot be told)."""
        if info is None:
            with self._sql("read"):
                info = self._info()
        version = info.get("version", "0")
        if not (version.isascii() and version.isdigit() and len(version) < 10):
            raise DataError(f"The version record of the gallery {self.path} is damaged ({version[:40]!r}), so "
                            f"facenet cannot tell whether it reads it right; {_REBUILD_ADVICE.format(self.path)}")

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
        return _model_from(info, self.path, has_faces)

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
                _model_from(self._info(), self.path,
                            self._db.execute("SELECT 1 FROM faces LIMIT 1").fetchone() is not None)
                if "model" not in self._info():
                    self._db.executemany("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", values.items())
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise self._read_only_error()

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
            keys = _name_keys(person)
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
        """Enrol faces in one transaction: all land or none. None for an image that is in already.
        A new gallery's first faces make its file (`_first_commit`)."""
        rows = list(rows)
        model = self.model
        if model is None:
            raise UsageError("Bind the gallery to a model (Gallery.bind) before adding faces.")
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
        from ..atomic import remove_stale_temps, temp_path
        from ..errors import write_error

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.path.parent) from None
        remove_stale_temps(self.path.parent, recursive=False)  # e.g. a killed first `gallery add`'s copy
        tmp = temp_path(self.path)
        try:
            with self._sql("write"):
                disk = sqlite3.connect(str(tmp), isolation_level=None)
                try:
                    disk.execute("PRAGMA journal_mode = OFF")  # a temporary file: a failure discards it whole
                    self._db.backup(disk)
                    mode = disk.execute("PRAGMA journal_mode = WAL").fetchone()[0]  # set in the file's header
                    if str(mode).lower() != "wal":
                        disk.execute("PRAGMA journal_mode = DELETE")
                finally:
                    disk.close()
            _fsync(tmp)
            try:
                os.link(tmp, self.path)  # unlike rename, never replaces a gallery another run just made
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if self.path.exists():  # a file system without hard links
                    return False
                os.rename(tmp, self.path)
            _fsync(self.path.parent)
        except OSError as exc:
            raise write_error(exc, self.path) from None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
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
                generation = max(_generation(info), 0)
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
        return GalleryState(info.get("gallery_id", ""), _generation(info), int(count), int(max_id),
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
        def run(pending: GalleryChanges) -> int:
            person_id = next((found for found in (self._person_id(key, create=False) for key in _name_keys(name))
                              if found is not None), None)
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
            self._db.execute("DELETE FROM faces WHERE id = ?", (int(face_id),))
            pending.removed.add(int(face_id))
            return person

        return self._write(run)

    def move_face(self, face_id: int, new_name: str) -> tuple[str, str]:
        """Move a face to another person (made when new); (old name, new name)."""
        target = normalise_name(new_name)

        def run(pending: GalleryChanges):
            old = self._face_person(face_id)
            person_id = self._person_id(target, create=True)
            self._db.execute("UPDATE faces SET person_id = ? WHERE id = ?", (person_id, int(face_id)))
            return old, target

        return self._write(run)

    def _face_person(self, face_id: int) -> str:
        row = None
        if valid_face_id(int(face_id)):  # beyond 64 bits SQLite cannot even be asked: no face has such an id
            row = self._db.execute("SELECT p.name FROM faces f JOIN people p ON p.id = f.person_id WHERE f.id = ?",
                                   (int(face_id),)).fetchone()
        if row is None:
            raise UsageError(f"No face with id {face_id} is in {self.path}; see "
                             f"`facenet gallery list {self.path} --faces`.")
        return row[0]


def _generation(info: dict[str, str]) -> int:
    """The generation record; -1 when damaged (no index matches it; the next write restarts it)."""
    value = info.get("generation", "0")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else -1


def _fsync(path: Path) -> None:
    """Make a file's (or a folder's entries') writes durable before the next step relies on them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # folders on some file systems
            raise
    finally:
        os.close(fd)


def _model_from(info: dict[str, str], path: Path, has_faces: bool) -> GalleryModel | None:
    """The gallery model its info rows record; None for none (and no faces); DataError when damaged."""
    if "model" not in info:
        if has_faces:
            raise DataError(f"The model record of the gallery {path} is missing, so its faces cannot be matched and "
                            f"no other model's may join them; {_REBUILD_ADVICE.format(path)}")
        return None
    try:
        record = json.loads(info["model"])
        model = GalleryModel(name=str(record["name"]), ref=info["model_ref"], fingerprint=info["fingerprint"],
                             align=dict(record["align"]), dim=int(record["embedding_dim"]), flip=info["flip"] == "1",
                             record=record)
        if model.dim < 1 or info["flip"] not in ("0", "1"):
            raise ValueError("out of range")
        return model
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError):
        raise DataError(f"The model record of the gallery {path} is damaged, so its faces cannot be matched; "
                        f"{_REBUILD_ADVICE.format(path)}") from None


class _translate_errors:
    """SQLite's exceptions as one-sentence typed errors."""

    def __init__(self, path: Path, doing: str):
        self.path, self.doing = path, doing

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, sqlite3.Error):
            return False
        raise _sqlite_error(self.path, exc, self.doing) from None


# SQLite's primary result codes (the low byte of an extended code such as SQLITE_READONLY_DBMOVED).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
_PARTICIPLE = {"read": "read", "write": "written", "open": "opened", "opened": "opened"}


def _sqlite_error(path: Path, exc: sqlite3.Error, doing: str) -> FacenetError:
    """The one-sentence typed error for an SQLite error, by its result code (SQLite's messages
    are not an interface, and one class has several: "database is locked" and "busy")."""
    from ..errors import DiskFull, WriteError

    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return FacenetError(f"The gallery {path} is locked by another program that is writing it; wait for it to "
                            "finish and rerun (nothing in the gallery was lost).")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return DataError(f"{path} is not a readable gallery (the file is damaged or not an SQLite database); give "
                         "a gallery file, or a new path to create one.")
    if primary == _SQLITE_READONLY:
        return WriteError(f"The gallery {path} is read-only (it can be listed, searched and exported, not changed); "
                          "copy it to a folder you can write to and change the copy.")
    if primary == _SQLITE_FULL or (primary == _SQLITE_IOERR and _no_space_left(path)):
        # An I/O error with no space left: e.g. the -shm file of a WAL gallery could not grow.
        return DiskFull(f"The disk is full while {'reading' if doing == 'read' else 'writing'} the gallery {path} "
                        "(SQLite needs room beside it even to read it); free some space and rerun (the faces added "
                        "before are kept).")
    if primary == _SQLITE_IOERR:
        return DataError(f"An input/output error stopped the gallery {path} being {_PARTICIPLE.get(doing, 'used')} "
                         f"({getattr(exc, 'sqlite_errorname', 'SQLITE_IOERR')}): the disk or its file system "
                         "failed; check them and rerun.")
    if primary in (_SQLITE_CANTOPEN, _SQLITE_PERM):
        return DataError(f"Cannot open the gallery {path}; check the path and its permissions, and that its "
                         "folder can be read.")
    return DataError(f"The gallery {path} could not be {_PARTICIPLE.get(doing, 'used')} ({exc}).")


def _no_space_left(path: Path) -> bool:
    folder = path.parent if path.parent.exists() else Path(".")
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 64 * 1024


# ------------------------------------------------------------------ adding from photos or reps

def plan_known_folder(folder: Path) -> list[tuple[str, str]]:
    """(person folder name, image path) for `KNOWN/<person>/<image>` (deeper files count for the person too)."""
    return _known_folder(folder)[0]


_LOOSE_PHOTO = "not in a person's folder (KNOWN/<name>/<photo>), so whose it is is not known"


def _known_folder(folder: Path) -> tuple[list[tuple[str, str]], list[AddOutcome]]:
    """The photos of `KNOWN/<person>/...` as (person, path), listed as `align` lists (photos.py:
    links to folders are not entered, so one person's folder cannot lend its photos to another
    or loop), and the outcome of every entry that is not read."""
    from ..pipeline.photos import list_folder

    listing = list_folder(folder)
    items: list[tuple[str, str]] = []
    refused: list[AddOutcome] = []
    for path, rel in listing.photos:
        person, _, rest = rel.partition("/")
        if rest:
            items.append((person, path))
        else:
            refused.append(AddOutcome(path, "skipped", detail=_LOOSE_PHOTO))
    for entry in listing.refused:
        person, _, rest = entry.rel.partition("/")
        refused.append(AddOutcome(entry.path, entry.status, person if rest else "", detail=entry.detail))
    return items, refused


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
    not_read: list[AddOutcome] = []  # entries of KNOWN/ that are not read (skipped, bad-name...)
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
            found, refused = _known_folder(path)
            if not found and all(o.detail == _LOOSE_PHOTO for o in refused):  # e.g. one person's folder given
                raise UsageError(f"{path} has no subfolder of photos; give a folder with one subfolder per person "
                                 "(KNOWN/<name>/<photo>).")
            items += found
            not_read += refused

    with Gallery(gallery_path, create=True, timeout=timeout) as gallery:
        report = AddReport(gallery.path, list(not_read))
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
    from ..models.catalogue import DEFAULT_MODEL
    from ..pipeline.face_pipeline import resolve_record

    bound = gallery.model
    ref = model or (bound.ref if bound else DEFAULT_MODEL)
    record = resolve_record(ref)
    use_flip = flip if flip is not None else (bound.flip if bound else True)
    gallery.check_model(record.name, record.align.to_dict(), record.embedding_dim, model_fingerprint(record), use_flip)
    return record, ref, use_flip


def _add_photos(gallery: Gallery, items: list[tuple[str, str]], *, model, flip, device, detector, upsample, faces,
                fallback, batch_size, on_start, on_advance) -> list[AddOutcome]:
    record, ref, use_flip = resolve_for(gallery, model, flip)
    if on_start:
        on_start(len(items))
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions

    # verify=False: each part checks its own files as it loads, so adding aligned crops needs no
    # landmark file.
    pipeline = FacePipeline.build(PipelineOptions(model=ref, device=device, flip=use_flip, batch_size=batch_size,
                                                  detector=detector, upsample=upsample, faces=faces,
                                                  fallback=fallback), record=record, verify=False)
    engine: dict = {}  # what the batches share once made (the gallery's same-face finder)

    def load(part: str):
        """The embedder or the aligner, each built the first time a photo needs it (an aligned
        crop needs no detector, an image already in the gallery neither)."""
        return pipeline.embedder if part == "embedder" else pipeline.aligner

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
        finds the rest in the gallery already. A face whose embedding equals one in the gallery
        is another file of the same face (an aligned crop of a photo already in): not enrolled."""
        if not in_flight:
            return
        batch, future = in_flight.pop()
        vectors = future.result()
        embedder = load("embedder")
        if gallery.model is None:
            gallery.bind(embedder.record, _ref_of(embedder), embedder.flip)
        if "same" not in engine:
            engine["same"] = _SameFaces(gallery)
        same: _SameFaces = engine["same"]
        enrol: list[tuple[int, _FaceToEnrol]] = []
        rows = []
        for (index, face), vector in zip(batch, vectors):
            twin = same.find(vector)
            if twin is not None:
                settle(index, AddOutcome(face.path, "duplicate", face.person,
                                         detail=f"its embedding equals that of {twin}: the same face (a crop or "
                                                "copy of a photo already in)"))
                continue
            same.note(vector, face.path)
            enrol.append((index, face))
            rows.append((face.person, vector, face.path, face.sha, face.box))
        ids = gallery.add_faces(rows) if rows else []
        for (index, face), face_id in zip(enrol, ids):
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


class _SameFaces:
    """The gallery's faces by embedding, to refuse one that is in already under another file: a
    vector within SAME_FACE_TOLERANCE of a face's in every component is that face (an aligned crop
    of a photo already in, a `represent` output of it, the gallery's own export). Read once, sorted
    by the first component, so a check is a binary search, not a scan of the gallery; the faces
    this run enrols are kept in buckets of that component."""

    def __init__(self, gallery: Gallery):
        _, enrolment = gallery.snapshot()
        self._labels: list[str] = []
        if enrolment is None:
            self._vectors = np.zeros((0, 1), np.float64)
        else:
            order = np.argsort(enrolment.embeddings[:, 0], kind="stable")
            self._vectors = enrolment.embeddings[order].astype(np.float64)
            self._labels = [f"face {int(enrolment.face_ids[i])} ({enrolment.names[enrolment.person_index[i]]})"
                            for i in order]
        self._keys = self._vectors[:, 0]
        self._new: dict[int, list[tuple[np.ndarray, str]]] = {}

    def find(self, vector: np.ndarray) -> str | None:
        """The face this vector equals, in words, or None."""
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        tol = SAME_FACE_TOLERANCE
        lo, hi = np.searchsorted(self._keys, v[0] - tol, "left"), np.searchsorted(self._keys, v[0] + tol, "right")
        if hi > lo:
            near = np.abs(self._vectors[lo:hi] - v).max(axis=1) <= tol
            if near.any():
                return self._labels[lo + int(np.argmax(near))]
        key = int(np.floor(v[0] / tol))
        for bucket in (key - 1, key, key + 1):
            for other, label in self._new.get(bucket, ()):
                if np.abs(other - v).max() <= tol:
                    return label
        return None

    def note(self, vector: np.ndarray, source: str) -> None:
        """A face this run enrols (so a second file of it later in the run is refused too)."""
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        self._new.setdefault(int(np.floor(v[0] / SAME_FACE_TOLERANCE)), []).append(
            (v, f"{printable_name(source)} (enrolled by this run)"))


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
    from ..images import read_rgb

    if person not in bad_names:
        bad_names[person] = name_problem(person) or ""
    if bad_names[person]:
        return AddOutcome(path, "bad-name", person, detail=bad_names[person])
    person = _nfkc(person)  # as stored (normalise_name)
    problem = path_problem(path)
    if problem:  # its source would break every CSV it goes into (export, reports)
        return AddOutcome(printable_name(path), "bad-name", person, detail=problem)
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
    from ..align.aligner import AlignedFace
    from ..formats.aligned import SPEC_FILE
    from ..detect import FaceBox

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
    from ..formats.aligned import AlignedFolder

    return AlignedFolder(root).spec()


def _ref_of(embedder: "Embedder") -> str:
    from ..models.catalogue import CATALOGUE

    record = embedder.record
    if record.name in CATALOGUE and model_fingerprint(CATALOGUE[record.name]) == model_fingerprint(record):
        return record.name
    return record.weights.path if record.weights is not None and record.weights.path else record.name


def _add_reps(gallery: Gallery, folder: Path, model, flip, on_start, on_advance) -> list[AddOutcome]:
    """Enrol a `represent` output: person = each face's folder name; refuse another model's reps."""
    from ..models.catalogue import ModelRecord
    from ..formats.reps import person_of, read_reps

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
        from ..pipeline.face_pipeline import resolve_record

        wanted = resolve_record(model)
        if model_fingerprint(wanted) != model_fingerprint(record):
            raise SpecMismatch(f"{folder} holds embeddings of {record.name}, not of {wanted.name}; represent the "
                               f"photos with --model {model} or drop --model.")
    gallery.check_model(record.name, record.align.to_dict(), record.embedding_dim, model_fingerprint(record), reps_flip)
    if reps.embeddings.shape[1] != record.embedding_dim:
        raise DataError(f"{folder} holds {reps.embeddings.shape[1]}-d embeddings but its model {record.name} makes "
                        f"{record.embedding_dim}-d ones; represent the photos again.")
    if gallery.model is None:
        from ..models.catalogue import CATALOGUE

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
    recorded = _recorded_shas(reps)
    aligned = reps.meta.get("aligned") if isinstance(reps.meta.get("aligned"), str) else None
    same = _SameFaces(gallery)
    for row, (path, vector) in enumerate(zip(reps.paths, reps.embeddings)):
        person = person_of(path)
        problem = name_problem(person) or path_problem(path)
        if problem:
            outcomes.append(AddOutcome(printable_name(path), "bad-name", printable_name(person), detail=problem))
            continue
        if recorded is not None:
            sha, found = recorded[row], True
        else:
            sha, found = _reps_face_sha(folder, path, vector, aligned)
        if sha in seen or gallery.has_image(sha):
            outcomes.append(AddOutcome(path, "already-in", person, detail="this face is in the gallery already"))
            continue
        twin = same.find(vector)
        if twin is not None:
            if found:
                detail = f"its embedding equals that of {twin}: the same face (a crop, copy or export of a photo)"
            else:
                detail = (f"an unverifiable duplicate: its image cannot be found to tell it apart, and its embedding "
                          f"equals that of {twin}")
            outcomes.append(AddOutcome(path, "duplicate", person, detail=detail))
            continue
        seen.add(sha)
        same.note(vector, path)
        outcome = AddOutcome(path, "added", _nfkc(person))
        outcomes.append(outcome)
        pending.append((outcome, (person, vector, path, sha, None)))
        if len(pending) >= 500:
            flush()
    if pending:
        flush()
    return outcomes


def _recorded_shas(reps) -> list[str] | None:
    """The image SHA-256 of every row, as `gallery export` records them in meta.json, when they
    are there, one per row, each well formed; else None."""
    import re

    recorded = reps.meta.get("image_sha256")
    if not isinstance(recorded, list) or len(recorded) != len(reps.paths):
        return None
    pattern = re.compile(r"(emb:)?[0-9a-f]{64}")
    if not all(isinstance(sha, str) and pattern.fullmatch(sha) for sha in recorded):
        return None
    return recorded


def _reps_face_sha(folder: Path, path: str, vector: np.ndarray, aligned: str | None = None) -> tuple[str, bool]:
    """(the key of a reps row, whether its image was found). The key is the image's SHA-256
    wherever its file can be found: the path as written when absolute; else its trailing
    `<person>/<image>` (or longer) parts under the folder the embeddings were made from
    (meta.json's `aligned`, recorded absolute by `represent`) or under the reps folder itself
    (`represent --photos` writes OUT/aligned); else the path relative to the current directory.
    Without a file, a digest of the embedding (`emb:`)."""
    written = PurePath(path.replace("\\", "/"))
    parts = written.parts
    candidates: list[Path] = []
    if written.is_absolute():
        candidates.append(Path(written))
    else:
        candidates.append(folder / written)
    tails = [PurePath(*parts[i:]) for i in range(len(parts) - 1) if not PurePath(*parts[i:]).is_absolute()]
    for root in (aligned, folder):
        if root:
            candidates += [Path(root) / tail for tail in tails]
    if not written.is_absolute():
        candidates.append(Path(written))
    for candidate in candidates:
        try:
            if candidate.is_file():
                return file_sha256(candidate), True
        except OSError:
            pass
    return "emb:" + hashlib.sha256(np.asarray(vector, dtype="<f4").tobytes()).hexdigest(), False


# ------------------------------------------------------------------ export

def export_gallery(gallery_path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the gallery as OpenFace's representation folder (labels.csv, reps.csv, reps.npy, meta.json).

    Each face's path is its source when the source's folder is the person's name, else
    `<person>/<source file name>`, so reading the folder back gives every face its person;
    meta.json's `image_sha256` lists each row's image, so adding the export back to the gallery
    enrols nothing twice. A source no CSV can carry (a control character) is written with U+FFFD
    in its place rather than refusing the whole gallery.
    """
    from ..formats.reps import RepsWriter, person_of

    with Gallery(gallery_path) as gallery:
        enrolment = gallery.enrolment()
        by_id = {face.id: face for face in gallery.faces()}
    model = enrolment.model
    # Each row's image SHA-256, so adding the export back finds its faces in the gallery already
    # wherever it runs (the sources may be relative to another directory).
    shas = [by_id[int(face_id)].image_sha256 for face_id in enrolment.face_ids]
    meta = {"model": model.record, "flip": model.flip, "gallery": str(Path(gallery_path)), "image_sha256": shas}
    with RepsWriter(out, len(enrolment.face_ids), model.dim, meta) as writer:
        for face_id, vector, person_i in zip(enrolment.face_ids, enrolment.embeddings, enrolment.person_index):
            person = enrolment.names[person_i]
            source = _exportable(by_id[int(face_id)].source)
            path = source if person_of(source) == person else f"{person}/{PurePath(source.replace(chr(92), '/')).name}"
            writer.add(path, person, vector)
    return len(enrolment.face_ids)


def _exportable(source: str) -> str:
    """A face's source as a labels.csv path: a control character or an undecodable byte (in a
    gallery enrolled before such names were refused) becomes U+FFFD, not a backslash escape, which
    would read as a folder. The row keeps its face: its person is the folder, its image the
    SHA-256 recorded in meta.json."""
    if not path_problem(source):
        return source
    return "".join("\ufffd" if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in source)


def gallery_summary(gallery_path: str | os.PathLike, with_faces: bool = False) -> dict:
    """`facenet gallery list`: the model, and each person's number of faces (and faces, if asked).
    It reads a gallery whose version or model record is damaged (`model` is then None and
    `problem` says what is wrong): where its faces came from is what rebuilding it needs."""
    with Gallery(gallery_path, salvage=True) as gallery:
        problem = None
        try:
            model = gallery.model
            gallery._check_version()
        except DataError as exc:
            model, problem = None, str(exc)
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
        if problem:
            summary["problem"] = problem
        if with_faces:
            summary["faces"] = [{"id": f.id, "person": f.person, "source": f.source,
                                 "box": list(f.box) if f.box else None} for f in gallery.faces()]
    return summary


def remove_from_gallery(gallery_path: str | os.PathLike, target: str) -> dict:
    """`facenet gallery remove`: a person by name, or one face by its id (ASCII digits that are no
    one's name; `parse_face_id`)."""
    with Gallery(gallery_path) as gallery:
        names = {n for n, _ in gallery.people()}
        stored = next((key for key in _name_keys(target) if key in names), None)
        face_id = parse_face_id(target)
        if stored is None and face_id is not None:
            person = gallery.remove_face(face_id)
            gallery.keep_index_current()
            return {"removed_faces": 1, "person": person, "face_id": face_id}
        count = gallery.remove_person(target)
        gallery.keep_index_current()
        return {"removed_faces": count, "person": stored or _nfkc(target)}


def move_in_gallery(gallery_path: str | os.PathLike, face_id: int | str, new_name: str) -> dict:
    """`facenet gallery move`: give a face to another (maybe new) person. `face_id` as typed is
    read by `parse_face_id`."""
    if isinstance(face_id, str):
        parsed = parse_face_id(face_id)
        if parsed is None:
            raise UsageError(f"{face_id!r} is not a face id; give the number (ASCII digits) that `facenet gallery "
                             f"list {gallery_path} --faces` shows.")
        face_id = parsed
    with Gallery(gallery_path) as gallery:
        old, new = gallery.move_face(int(face_id), new_name)
        gallery.keep_index_current()
    return {"face_id": int(face_id), "from": old, "to": new}

