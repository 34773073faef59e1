"""The one home for writing files atomically: a temporary file beside the target, then a rename.

A killed run never leaves half a file under the real name. Temporary files carry the writer's
process id (`.NAME.tmp-PID-TOKEN`), so a later run can tell the leftovers of a dead process
(removed by `remove_stale_temps`) from the live files of a run beside it. Writes that fail
because the disk is full raise `DiskFull`, other write failures `WriteError`, always after
removing the temporary file.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .errors import write_error

TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"^\..*\.tmp-(\d+)-[0-9a-f]+(\.[A-Za-z0-9]+)?$")


def temp_path(path: Path, suffix: str = "") -> Path:
    """A fresh temporary name beside `path` (hidden, tagged with this process id)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def is_temp_name(name: str) -> bool:
    return _TEMP_NAME.match(name) is not None


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                newline: str | None = None, suffix: str = "") -> Iterator[IO]:
    """`with atomic_open(path) as fh:` writes `path` whole or not at all.

    `suffix` keeps a temporary file's extension where a writer needs one (np.save adds `.npy`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, path.parent) from None
    tmp = temp_path(path, suffix)
    try:
        with open(tmp, mode, encoding=encoding, newline=newline) as fh:
            yield fh
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from None
    finally:
        # Also on KeyboardInterrupt or any error in the caller's block.
        if tmp.exists():
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def json_safe(value):
    """`value` with every non-finite float (NaN, +-Infinity, numpy's too) as None: strict JSON
    has no such numbers, and most parsers refuse Python's `NaN`/`Infinity` extensions."""
    import math

    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:  # numpy scalars
        return json_safe(value.item())
    return value


def write_json_atomic(path: str | os.PathLike, value) -> None:
    """A JSON file for people and other programs: strict JSON (non-finite numbers as null)."""
    write_text_atomic(path, json.dumps(json_safe(value), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Delete the temporary files that dead processes left in `folder`; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    walker = os.walk(folder) if recursive else [(str(folder), [], [p.name for p in folder.iterdir()])]
    for dirpath, _, filenames in walker:
        for name in filenames:
            match = _TEMP_NAME.match(name)
            if match and not _alive(int(match.group(1))):
                try:
                    Path(dirpath, name).unlink()
                    removed += 1
                except OSError:
                    pass
    return removed
