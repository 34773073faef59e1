"""The SQLite gallery as a file: made whole with its first faces, refused clearly where it cannot
be written, and its info rows (the model record, the generation) read back with one-sentence
errors when damaged. Used by store/sqlite.py only."""
from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from ..errors import DataError, FacenetError, UsageError
from .sqlite_errors import sqlite_error, translate_errors
from .types import GalleryModel

# What works for a gallery whose info rows are damaged: its faces' photos are the source of truth,
# and `gallery list --with-faces` (which reads such a gallery) shows where each came from.
REBUILD_ADVICE = ("list where its faces came from with `facenet gallery list {0} --with-faces` and add those photos "
                  "to a new gallery.")


def check_can_create(path: Path) -> None:
    """Refuse now, before any work, a new gallery whose folder cannot be made or written."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"Cannot create the gallery {path}: {folder} is a file, not a folder; "
                         "choose another path.")
    if not os.access(folder, os.W_OK):
        raise read_only_error(path, folder)


def read_only_error(path: Path, folder: Path | None = None) -> FacenetError:
    from ..errors import WriteError

    where = folder if folder is not None else path
    try:
        on_read_only_disk = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except OSError:
        on_read_only_disk = False
    why = "is on a read-only file system" if on_read_only_disk else "is read-only"
    if folder is not None:
        return WriteError(f"Cannot create the gallery {path}: its folder {folder} {why}; choose a folder "
                          "you can write to.")
    return WriteError(f"The gallery {path} {why} (it can be listed, searched and exported, not changed); "
                      "copy it to a folder you can write to and change the copy.")


def connect_file(path: Path, timeout: float, create: bool) -> tuple[sqlite3.Connection, bool]:
    """A connection to the gallery file, and whether the user cannot write it (then SQLite may not
    either; `create`, i.e. opening for writing, is then refused)."""
    real = path.resolve()  # SQLite keeps the -wal and -shm files beside a link's target
    folder_writable = os.access(real.parent, os.W_OK)
    cannot_write = not (folder_writable and os.access(real, os.W_OK))
    if cannot_write and create:
        raise read_only_error(path)
    # Read-only: in a folder SQLite cannot write either, the -wal and -shm files a WAL gallery
    # needs cannot be made: read the file as immutable (nothing can be writing it there), which
    # needs neither, unless a -wal holds commits it would then miss.
    wal = real.with_name(real.name + "-wal")
    pending_wal = not folder_writable and wal.exists() and wal.stat().st_size > 0
    try:
        if cannot_write:
            uri = f"file:{quote(str(real))}?mode=ro" + ("" if folder_writable or pending_wal else "&immutable=1")
            db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
        else:
            # isolation_level=None: we open every transaction ourselves (BEGIN IMMEDIATE for writes).
            db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise sqlite_error(path, exc, "opened") from None
    if pending_wal:
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            db.close()
            raise DataError(f"The gallery {path} has changes in {wal.name} that cannot be read in its read-only "
                            "folder; copy both files to a folder you can write to and use the copy.") from None
    return db, cannot_write


def write_new_file(memory: sqlite3.Connection, path: Path) -> bool:
    """Copy the in-memory gallery `memory` to a temporary file beside `path` and link that into
    place, so the file appears whole or not at all; False when `path` was taken meanwhile (link
    refuses to replace a gallery another run just made)."""
    from ..atomic import remove_stale_temps, temp_path
    from ..errors import write_error

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, path.parent) from None
    remove_stale_temps(path.parent, recursive=False)  # e.g. a killed first `gallery add`'s copy
    tmp = temp_path(path)
    try:
        with translate_errors(path, "write"):
            disk = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                disk.execute("PRAGMA journal_mode = OFF")  # a temporary file: a failure discards it whole
                memory.backup(disk)
                mode = disk.execute("PRAGMA journal_mode = WAL").fetchone()[0]  # set in the file's header
                if str(mode).lower() != "wal":
                    disk.execute("PRAGMA journal_mode = DELETE")
            finally:
                disk.close()
        fsync(tmp)
        try:
            os.link(tmp, path)  # unlike rename, never replaces a gallery another run just made
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if path.exists():  # a file system without hard links
                return False
            os.rename(tmp, path)
        fsync(path.parent)
    except OSError as exc:
        raise write_error(exc, path) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return True


def generation_in(info: dict[str, str]) -> int:
    """The generation record; -1 when damaged (no index matches it; the next write restarts it)."""
    value = info.get("generation", "0")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else -1


def fsync(path: Path) -> None:
    """Make a file's (or a folder's entries') writes durable before the next step relies on them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # folders on some file systems
            raise
    finally:
        os.close(fd)


def model_from_info(info: dict[str, str], path: Path, has_faces: bool) -> GalleryModel | None:
    """The gallery model its info rows record; None for none (and no faces); DataError when damaged."""
    if "model" not in info:
        if has_faces:
            raise DataError(f"The model record of the gallery {path} is missing, so its faces cannot be matched and "
                            f"no other model's may join them; {REBUILD_ADVICE.format(path)}")
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
                        f"{REBUILD_ADVICE.format(path)}") from None


