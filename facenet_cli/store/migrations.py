"""The SQLite gallery's schema as numbered migrations, applied when a gallery is opened (in the
spirit of sqlite-utils' migrations).

`MIGRATIONS` lists (number, function) in order; each function takes the connection inside an
open write transaction and brings the schema from the previous number to its own. The number
applied last is the file's `version` row in `info` (a file without tables is version 0), so a
gallery written by any earlier release opens as it is and is upgraded once, in one transaction,
by the first program that can write it; a file of a later version than this code knows is
refused (a newer facenet wrote it). Migration 1 is the schema of the first release; the next
change to the schema is one more function and one more entry, never an edit of an applied one.
"""
from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Callable

from ..errors import DataError

FORMAT = "facenet-gallery"


def _v1_first_schema(db: sqlite3.Connection) -> None:
    """info (key/value rows), people and faces, as the first release wrote them."""
    for statement in (
        "CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, added REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS faces (id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL REFERENCES people(id), "
        "embedding BLOB NOT NULL, source TEXT NOT NULL, image_sha256 TEXT NOT NULL UNIQUE, box_left INTEGER, "
        "box_top INTEGER, box_right INTEGER, box_bottom INTEGER, added REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS faces_person ON faces(person_id)",
    ):
        db.execute(statement)
    for key, value in (("format", FORMAT), ("created", str(time.time())), ("gallery_id", uuid.uuid4().hex),
                       ("generation", "0"), ("revision", uuid.uuid4().hex)):
        db.execute("INSERT OR IGNORE INTO info(key, value) VALUES (?, ?)", (key, value))


MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (1, _v1_first_schema),
]
LATEST = MIGRATIONS[-1][0]


def applied_version(db: sqlite3.Connection) -> int | None:
    """The last migration applied to the file: 0 for a file without tables, None when its
    version row is not a number (a damaged gallery)."""
    if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        return 0
    row = db.execute("SELECT value FROM info WHERE key = 'version'").fetchone()
    value = "0" if row is None else str(row[0])
    return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else None


def outdated(version: int | None) -> bool:
    """Whether a file at this version lacks migrations this code knows (None: damaged, not outdated)."""
    return version is not None and version < LATEST


def refuse_newer(version: int | None, path: Path) -> None:
    """DataError when the file was written by a facenet that knows later migrations than this one."""
    if version is not None and version > LATEST:
        raise DataError(f"{path} was written by a newer facenet (gallery version {version}); "
                        "upgrade facenet to read it.")


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Apply the migrations the file lacks, all in one write transaction (all land or none);
    the version it is at now. The caller holds no transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = applied_version(db)  # read again inside the lock: another program may have just migrated
        if version is None:
            raise DataError(f"The version record of the gallery {path} is damaged, so it cannot be upgraded.")
        refuse_newer(version, path)
        for number, step in MIGRATIONS:
            if number > version:
                step(db)
                db.execute("INSERT OR REPLACE INTO info(key, value) VALUES ('version', ?)", (str(number),))
                version = number
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return version
