"""OpenFace's representation folder: `labels.csv`, `reps.csv`, `reps.npy` and `meta.json`.

- `labels.csv`: one row `class_id,path` per face, no header. The class id is a number per
  person (the face's parent folder name), starting at 1 in sorted order of the names, as
  OpenFace's batch-represent numbered them.
- `reps.csv`: the embeddings in the same order, comma-separated floats, no header.
- `reps.npy`: the same embeddings as a float32 N x D array, quicker to load.
- `meta.json`: whatever the caller records (model, alignment spec...), plus `dimension`
  and `count`.

`RepsWriter` streams faces to temporary files and renames them into place only when the
whole run succeeded, so a folder never holds half a run. Reading accepts folders written by
OpenFace itself (no `reps.npy`, no `meta.json`).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from .errors import DataError, UsageError

LABELS = "labels.csv"
REPS_CSV = "reps.csv"
REPS_NPY = "reps.npy"
META = "meta.json"

# Nine significant digits bring a float32 back bit for bit.
_CSV_FLOAT = "%.9g"


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

    @property
    def people(self) -> list[str]:
        """Each face's person (its parent folder name), in row order."""
        return [person_of(p) for p in self.paths]


class RepsWriter:
    """Write a representation folder face by face with memory flat in the number of faces.

    `count` is the most rows that will be added (for example the number of images); adding
    fewer is fine, the files are trimmed on close. Use it as a context manager: the files
    appear in `out_dir` only when the `with` block ends without an exception.
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
        tag = f".tmp-{os.getpid()}-{id(self)}"
        # Person names are only known in full at the end, so rows first go out as
        # (person, path) and get their class ids on close.
        self._tmp = {
            "people": self.out_dir / f".people{tag}.csv",
            LABELS: self.out_dir / f".{LABELS}{tag}",
            REPS_CSV: self.out_dir / f".{REPS_CSV}{tag}",
            REPS_NPY: self.out_dir / f".reps{tag}.npy",
            META: self.out_dir / f".{META}{tag}",
        }

    def __enter__(self) -> "RepsWriter":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"Cannot create the output folder {self.out_dir} ({exc.strerror}); choose a writable --out.") from None
        try:
            self._people_file = open(self._tmp["people"], "w", newline="", encoding="utf-8")
            self._people_csv = csv.writer(self._people_file)
            self._reps_csv = open(self._tmp[REPS_CSV], "w", encoding="utf-8")
            self._npy = np.lib.format.open_memmap(self._tmp[REPS_NPY], mode="w+", dtype=np.float32,
                                                  shape=(self.count, self.dim))
        except OSError as exc:
            self.__exit__(type(exc), exc, None)
            raise UsageError(f"Cannot write in {self.out_dir} ({exc.strerror}); choose a writable --out with free space.") from None
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
        if "\n" in path or "\r" in path:
            raise UsageError(f"Image path {path!r} contains a line break; rename the file.")
        self._npy[self.rows:self.rows + len(rows)] = rows
        for row in rows:
            self._people_csv.writerow([person, path])
            self._reps_csv.write(",".join(_CSV_FLOAT % v for v in row) + "\n")
        self._people.add(person)
        self.rows += len(rows)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._close_files()
            if exc_type is None:
                if self.rows == 0:
                    raise DataError(f"No face was added, so nothing was written to {self.out_dir}; check that the input holds faces.")
                self._finish()
        finally:
            for tmp in self._tmp.values():
                tmp.unlink(missing_ok=True)
        return False

    def _close_files(self) -> None:
        self._open = False
        for name in ("_people_file", "_reps_csv"):
            if hasattr(self, name):
                getattr(self, name).close()
        if hasattr(self, "_npy"):
            self._npy.flush()
            # Drop the memmap before the file is trimmed, renamed or removed.
            del self._npy

    def _finish(self) -> None:
        if self.rows < self.count:
            _trim_npy_rows(self._tmp[REPS_NPY], self.rows, self.dim)
        class_ids = {name: i for i, name in enumerate(sorted(self._people), start=1)}
        with open(self._tmp["people"], newline="", encoding="utf-8") as src, \
                open(self._tmp[LABELS], "w", newline="", encoding="utf-8") as dst:
            out = csv.writer(dst, lineterminator="\n")
            for person, path in csv.reader(src):
                out.writerow([class_ids[person], path])
        meta = {**self.meta, "dimension": self.dim, "count": self.rows}
        self._tmp[META].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        # meta.json goes last: a reader that finds it knows the other three are in place.
        for name in (LABELS, REPS_CSV, REPS_NPY, META):
            os.replace(self._tmp[name], self.out_dir / name)


def _trim_npy_rows(path: Path, rows: int, dim: int) -> None:
    """Shrink a C-order 2-D .npy file in place to its first `rows` rows.

    The new header is padded to the old header's length so the data does not move.
    """
    with open(path, "r+b") as fh:
        version = np.lib.format.read_magic(fh)
        header_start = fh.tell() + (2 if version == (1, 0) else 4)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(fh)
        data_start = fh.tell()
        descr = np.lib.format.dtype_to_descr(dtype)
        header = "{'descr': %r, 'fortran_order': False, 'shape': (%d, %d), }" % (descr, rows, dim)
        header = header.ljust(data_start - header_start - 1) + "\n"
        fh.seek(header_start)
        fh.write(header.encode("latin1"))
        fh.truncate(data_start + rows * dim * dtype.itemsize)


def read_reps(folder) -> Reps:
    """Read a representation folder, from `reps.npy` when present, else from `reps.csv`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Representation folder {folder} does not exist; pass the --out folder of `facenet represent`.")
    labels_file = folder / LABELS
    if not labels_file.is_file():
        raise DataError(f"{folder} has no {LABELS}; pass a folder written by `facenet represent` or OpenFace's batch-represent.")
    labels, paths = _read_labels(labels_file)
    embeddings = _read_embeddings(folder)
    if len(embeddings) != len(paths):
        raise DataError(f"{folder} holds {len(paths)} labels but {len(embeddings)} embeddings; "
                        "the folder was written by two different runs, so represent the images again.")
    return Reps(paths=paths, labels=labels, embeddings=embeddings, meta=_read_meta(folder / META))


def _read_labels(path: Path) -> tuple[np.ndarray, list[str]]:
    labels: list[int] = []
    paths: list[str] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row:
                continue
            try:
                if len(row) != 2:
                    raise ValueError
                # OpenFace's files sometimes hold the id as a float, like "1.0".
                labels.append(int(float(row[0])))
            except ValueError:
                raise DataError(f"{path} line {line_no} is not `class_id,path` (got {','.join(row)[:80]!r}); "
                                "rewrite it with `facenet represent`.") from None
            paths.append(row[1])
    if not paths:
        raise DataError(f"{path} is empty; represent some faces into this folder first.")
    return np.asarray(labels, dtype=np.int64), paths


def _read_embeddings(folder: Path) -> np.ndarray:
    npy, csv_file = folder / REPS_NPY, folder / REPS_CSV
    if npy.is_file():
        try:
            embeddings = np.load(npy, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{npy} is not a readable .npy array ({exc}); delete it to fall back on {REPS_CSV}.") from None
        if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
            raise DataError(f"{npy} holds a {embeddings.dtype} array of shape {embeddings.shape}, not N x D floats; "
                            f"delete it to fall back on {REPS_CSV}.")
        source = npy
    elif csv_file.is_file():
        if csv_file.stat().st_size == 0:
            raise DataError(f"{csv_file} is empty; represent the images again.")
        try:
            embeddings = np.loadtxt(csv_file, delimiter=",", dtype=np.float32, ndmin=2)
        except ValueError as exc:
            raise DataError(f"{csv_file} is not rows of comma-separated numbers ({exc}); represent the images again.") from None
        source = csv_file
    else:
        raise DataError(f"{folder} has neither {REPS_NPY} nor {REPS_CSV}; pass a folder written by `facenet represent`.")
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise DataError(f"{source} holds no embeddings; represent the images again.")
    if not np.isfinite(embeddings).all():
        raise DataError(f"{source} holds NaN or infinite values; represent the images again.")
    return embeddings


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it or represent the images again.") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} must hold a JSON object; delete it or represent the images again.")
    return meta
