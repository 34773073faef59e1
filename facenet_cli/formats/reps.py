"""OpenFace's representation folder, the one home of its contract: `labels.csv`, `reps.csv`,
`reps.npy` and `meta.json`.

- `labels.csv`: one row `class_id,path` per face, no header, written and read with the csv
  module. The class id is a number per person (the face's parent folder name), starting at 1 in
  sorted order of the names, as OpenFace's batch-represent numbered them. Paths whose name holds
  a line break or another control character are refused (`aligned.name_problem`): OpenFace's
  own readers split lines, so such a row would break the file for them.
- `reps.csv`: the embeddings in the same order, comma-separated floats (nine significant digits,
  so float32 values come back bit for bit), no header.
- `reps.npy`: the same embeddings as a little-endian float32 N x D array, quicker to load.
- `meta.json`: whatever the caller records (model, aligned folder as an absolute path, flip,
  `normalised`), plus `dimension`, `count` and the SHA-256 of reps.npy and reps.csv
  (`sha256`). Reading checks them all (and that rows have unit length when `normalised`), so a
  damaged file or files from two runs are refused with one sentence instead of giving wrong
  numbers.

`RepsWriter` streams faces into temporary files (atomic.py's names, tagged with the process id)
with plain sequential writes, and renames them into place only when the whole run succeeded:
reps.npy, reps.csv, labels.csv, then meta.json last. A full disk is a `DiskFull` error with every
temporary file removed; the temporary files of a killed run are removed by the next writer into
the folder. Reading accepts folders written by OpenFace itself (no `reps.npy`, no `meta.json`).
"""
from __future__ import annotations

import csv
import io
import json
import struct
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePath

import numpy as np

from .aligned import name_problem
from ..atomic import atomic_open, remove_stale_temps, temp_path
from ..errors import DataError, UsageError, write_error
from ..models.hub import file_sha256

LABELS = "labels.csv"
REPS_CSV = "reps.csv"
REPS_NPY = "reps.npy"
META = "meta.json"

# Nine significant digits bring a float32 back bit for bit.
_CSV_FLOAT = "%.9g"
# reps.npy's header has a fixed size, so the real row count can be written over the first
# estimate when the run ends, without moving the data behind it.
_NPY_HEADER_BYTES = 128
# A unit vector stored as float32 and summed in float64 is within ~1e-6 of length 1.
UNIT_TOLERANCE = 1e-3


def person_of(path: str) -> str:
    """The person a face belongs to: the name of the folder holding its image."""
    return PurePath(path.replace("\\", "/")).parent.name


@dataclass
class Reps:
    """Embeddings read from a representation folder; row i of `embeddings` is face `paths[i]`."""

    paths: list[str]
    labels: np.ndarray
    embeddings: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @cached_property
    def people(self) -> list[str]:
        """Each face's person (its parent folder name), in row order (computed once)."""
        return [person_of(p) for p in self.paths]


def _npy_header(rows: int, dim: int) -> bytes:
    """A version 1.0 .npy header for a C-order little-endian float32 (rows, dim) array."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    length = _NPY_HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode("latin1")


class RepsWriter:
    """Write a representation folder face by face with memory flat in the number of faces.

    `count` is the most rows that will be added (for example the number of images); adding
    fewer is fine. Use it as a context manager: the files appear in `out_dir` only when the
    `with` block ends without an exception; on an exception every temporary file is removed and
    what the folder held before is untouched.
    """

    def __init__(self, out_dir, count: int, dim: int, meta: dict | None = None):
        if int(count) < 1 or int(dim) < 1:
            raise UsageError(f"RepsWriter needs a positive count and dimension, got count={count} and dim={dim}.")
        self.out_dir = Path(out_dir)
        self.count = int(count)
        self.dim = int(dim)
        self.meta = dict(meta or {})
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"The meta record must hold only JSON values (strings, numbers, lists, dicts): {exc}.") from None
        self.rows = 0
        self._people: set[str] = set()
        self._open = False
        self._stack: ExitStack | None = None

    def __enter__(self) -> "RepsWriter":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.out_dir) from None
        if not self.out_dir.is_dir():
            raise UsageError(f"The output {self.out_dir} is a file; give a folder for the embeddings.")
        remove_stale_temps(self.out_dir, recursive=False)  # leftovers of killed runs
        stack = self._stack = ExitStack()
        try:
            # Committed in the reverse order on success: reps.npy, reps.csv, labels.csv, meta.json.
            self._meta_fh = stack.enter_context(atomic_open(self.out_dir / META, "w", encoding="utf-8", newline=""))
            self._labels_fh = stack.enter_context(atomic_open(self.out_dir / LABELS, "w", encoding="utf-8", newline=""))
            self._csv_fh = stack.enter_context(atomic_open(self.out_dir / REPS_CSV, "w", encoding="utf-8", newline=""))
            self._npy_fh = stack.enter_context(atomic_open(self.out_dir / REPS_NPY, "w+b"))
            # Person names are only known in full at the end, so rows first go to a scratch file
            # as (person, path) and get their class ids then.
            people_path = temp_path(self.out_dir / LABELS, ".people")
            stack.callback(people_path.unlink, missing_ok=True)
            self._people_fh = stack.enter_context(open(people_path, "w+", encoding="utf-8", newline=""))
            self._people_csv = csv.writer(self._people_fh, lineterminator="\n")
            self._reps_csv = csv.writer(self._csv_fh, lineterminator="\n")
            self._npy_fh.write(_npy_header(self.count, self.dim))
        except BaseException:
            self._abort()
            raise
        self._open = True
        return self

    def add(self, path: str, person: str, embeddings: np.ndarray) -> None:
        """Append one image's faces: `embeddings` is one row per face (or a single vector)."""
        if not self._open:
            raise UsageError("RepsWriter.add was called outside its `with` block; open it with `with RepsWriter(...) as w:`.")
        rows = np.asarray(embeddings, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise UsageError(f"Embeddings for {path} have shape {tuple(rows.shape)} but the writer was opened for dimension {self.dim}.")
        if self.rows + len(rows) > self.count:
            raise UsageError(f"More than {self.count} faces were added; open the RepsWriter with a larger count.")
        if not np.isfinite(rows).all():
            raise DataError(f"The embedding of {path} holds NaN or infinite values; check the model and the image.")
        problem = name_problem(path) or name_problem(person)
        if problem:
            raise UsageError(f"Image path {path!r} cannot go into {LABELS}: {problem}.")
        # Plain sequential writes: a full disk fails here as an OSError (DiskFull on the way out),
        # never later as a signal the way pages of a sparse memory map do.
        self._npy_fh.write(rows.astype("<f4").tobytes())
        for row in rows:
            self._people_csv.writerow([person, path])
            self._reps_csv.writerow([_CSV_FLOAT % v for v in row.tolist()])
        self._people.add(person)
        self.rows += len(rows)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._open = False
        if self._stack is None:
            return False
        if exc_type is not None:
            self._abort(exc_type, exc, tb)  # may raise a clearer error (DiskFull) in place of exc
            return False
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise
        stack, self._stack = self._stack, None
        stack.__exit__(None, None, None)  # the renames, meta.json last
        return False

    def _abort(self, exc_type=None, exc=None, tb=None) -> None:
        """Close and remove every temporary file; the exception goes to atomic_open, which turns
        an OSError such as ENOSPC into DiskFull / WriteError."""
        if exc_type is None:
            exc_type, exc, tb = sys.exc_info()
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        if self.rows == 0:
            raise DataError(f"No face was added, so nothing was written to {self.out_dir}; check that the input holds faces.")
        self._npy_fh.seek(0)
        self._npy_fh.write(_npy_header(self.rows, self.dim))
        self._npy_fh.flush()
        self._csv_fh.flush()
        class_ids = {name: i for i, name in enumerate(sorted(self._people), start=1)}
        self._people_fh.flush()
        self._people_fh.seek(0)
        labels = csv.writer(self._labels_fh, lineterminator="\n")
        for person, path in csv.reader(self._people_fh):
            labels.writerow([class_ids[person], path])
        meta = {**self.meta, "dimension": self.dim, "count": self.rows,
                "sha256": {REPS_NPY: file_sha256(self._npy_fh.name), REPS_CSV: file_sha256(self._csv_fh.name)}}
        self._meta_fh.write(json.dumps(meta, indent=2) + "\n")


# ---------------------------------------------------------------- reading

def read_reps(folder) -> Reps:
    """Read a representation folder, from `reps.npy` when present, else from `reps.csv`, and
    check it against meta.json (dimension, count, checksum, unit length)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Representation folder {folder} does not exist; pass the output folder of `facenet represent`.")
    labels_file = folder / LABELS
    if not labels_file.is_file():
        raise DataError(f"{folder} has no {LABELS}; pass a folder written by `facenet represent` or OpenFace's batch-represent.")
    meta = _read_meta(folder / META, folder)
    labels, paths = _read_labels(labels_file)
    embeddings, source = _read_embeddings(folder, meta)
    redo = "represent the images again"
    if "dimension" in meta and embeddings.shape[1] != meta["dimension"]:
        raise DataError(f"{source} holds {embeddings.shape[1]}-wide rows but {META} says the model gives "
                        f"{meta['dimension']}-d embeddings; the files come from different runs, so {redo}.")
    if "count" in meta and embeddings.shape[0] != meta["count"]:
        raise DataError(f"{source} holds {embeddings.shape[0]} embeddings but {META} says {meta['count']}; "
                        f"the files come from different runs, so {redo}.")
    if len(embeddings) != len(paths):
        raise DataError(f"{folder} holds {len(paths)} labels but {len(embeddings)} embeddings; "
                        f"the folder was written by two different runs, so {redo}.")
    if meta.get("normalised"):
        norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(norms[worst] - 1.0) > UNIT_TOLERANCE:
            raise DataError(f"Row {worst + 1} of {source} has length {norms[worst]:.4g}, but {META} says the "
                            f"embeddings are unit vectors; the file is damaged, so {redo}.")
    return Reps(paths=paths, labels=labels, embeddings=embeddings, meta=meta)


def _read_labels(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start} is not valid); rewrite it with "
                        "`facenet represent`.") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror}).") from None
    labels: list[int] = []
    paths: list[str] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if not row:
                continue
            try:
                if len(row) != 2:
                    raise ValueError
                # OpenFace's files sometimes hold the id as a float, like "1.0".
                labels.append(int(float(row[0])))
            except (ValueError, OverflowError):
                raise DataError(f"{path} line {reader.line_num} is not `class_id,path` (got {','.join(row)[:80]!r}); "
                                "rewrite it with `facenet represent`.") from None
            paths.append(row[1])
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num} is not CSV ({exc}); rewrite it with `facenet represent`.") from None
    if not paths:
        raise DataError(f"{path} is empty; represent some faces into this folder first.")
    return np.asarray(labels, dtype=np.int64), paths


def _check_sha256(path: Path, meta: dict) -> None:
    expected = meta.get("sha256", {}).get(path.name)
    if expected is not None and file_sha256(path) != expected:
        raise DataError(f"{path} does not match the checksum in {META}: it is damaged or was written by another "
                        "run, so represent the images again.")


def _read_embeddings(folder: Path, meta: dict) -> tuple[np.ndarray, Path]:
    npy, csv_file = folder / REPS_NPY, folder / REPS_CSV
    if npy.is_file():
        _check_sha256(npy, meta)
        try:
            embeddings = np.load(npy, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{npy} is not a readable .npy array ({exc}); delete it to fall back on {REPS_CSV}.") from None
        if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
            raise DataError(f"{npy} holds a {embeddings.dtype} array of shape {embeddings.shape}, not N x D floats; "
                            f"delete it to fall back on {REPS_CSV}.")
        source = npy
    elif csv_file.is_file():
        _check_sha256(csv_file, meta)
        embeddings = _read_reps_csv(csv_file)
        source = csv_file
    else:
        raise DataError(f"{folder} has neither {REPS_NPY} nor {REPS_CSV}; pass a folder written by `facenet represent`.")
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise DataError(f"{source} holds no embeddings; represent the images again.")
    if not np.isfinite(embeddings).all():
        raise DataError(f"{source} holds NaN or infinite values; represent the images again.")
    return embeddings, source


def _read_reps_csv(path: Path) -> np.ndarray:
    fix = "represent the images again"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; {fix}.") from None
    if not text.strip():
        raise DataError(f"{path} is empty; {fix}.")
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise DataError(f"{path} is not rows of comma-separated numbers (rows of {sorted(widths)} values); {fix}.")
    try:
        return np.array([[float(v) for v in row] for row in rows], dtype=np.float32).reshape(len(rows), -1)
    except ValueError as exc:
        raise DataError(f"{path} is not rows of comma-separated numbers ({exc}); {fix}.") from None


# meta.json fields this module (or its readers) rely on, with the JSON type each must have.
_META_FIELDS = {
    "dimension": (int, "a positive whole number"),
    "count": (int, "a whole number"),
    "aligned": (str, "the aligned folder's path, a string"),
    "flip": (bool, "true or false"),
    "normalised": (bool, "true or false"),
    "sha256": (dict, "an object of file name: checksum"),
}


def _read_meta(path: Path, folder: Path) -> dict:
    if not path.is_file():
        return {}
    fix = "delete it or represent the images again"
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); {fix}.") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} must hold a JSON object; {fix}.")
    for key, (kind, what) in _META_FIELDS.items():
        if key not in meta:
            continue
        value = meta[key]
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if not wrong and key == "dimension":
            wrong = value < 1
        if not wrong and key == "count":
            wrong = value < 0
        if not wrong and key == "sha256":
            wrong = not all(isinstance(v, str) for v in value.values())
        if wrong:
            raise DataError(f"{path} has {key} = {json.dumps(value)[:60]}, but {key} must be {what}; {fix}.")
    aligned = meta.get("aligned")
    if aligned and not Path(aligned).is_absolute():
        # Folders written before paths were stored absolute: relative to the reps folder, so
        # the result does not depend on the directory a command runs in.
        meta["aligned"] = str((folder / aligned).resolve())
    return meta
