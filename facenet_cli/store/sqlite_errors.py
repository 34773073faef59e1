"""SQLite's exceptions as the one-sentence typed errors every command prints (errors.py), by
result code: SQLite's messages are not an interface, and one class has several causes."""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from ..errors import DataError, FacenetError


class translate_errors:
    """SQLite's exceptions as one-sentence typed errors."""

    def __init__(self, path: Path, doing: str):
        self.path, self.doing = path, doing

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, sqlite3.Error):
            return False
        raise sqlite_error(self.path, exc, self.doing) from None


# SQLite's primary result codes (the low byte of an extended code such as SQLITE_READONLY_DBMOVED).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
_PARTICIPLE = {"read": "read", "write": "written", "open": "opened", "opened": "opened"}


def sqlite_error(path: Path, exc: sqlite3.Error, doing: str) -> FacenetError:
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


class Guarded:
    """A lock held, and SQLite's errors translated, for one operation of a store."""

    def __init__(self, lock: threading.RLock, translate: translate_errors):
        self.lock, self.translate = lock, translate

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            return self.translate.__exit__(exc_type, exc, tb)
        finally:
            self.lock.release()
