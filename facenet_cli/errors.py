"""Typed errors. Each message is one sentence that says what went wrong and how to fix it.

The library raises these; only the CLI turns them into `Error: ...` on stderr and an exit code:

    0    done (per-file problems such as unreadable images are outcomes in the report, not errors)
    1    the job could not be done: bad or damaged data, a checksum mismatch, a full disk
    2    usage error: a bad option or argument, a missing input, options that contradict
    3    nothing found: the inputs were read but hold no face to work on (compare, search,
         identify, cluster, gallery add: every command the same; the report still says why)
    130  interrupted (Ctrl-C); each command's message says what a rerun does (align resumes,
         train needs --resume, identify starts over: cli/_app.py INTERRUPTED)
"""
from __future__ import annotations

import errno
import os

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOTHING_FOUND = 3
EXIT_INTERRUPTED = 130


class FacenetError(Exception):
    """Base class for every error the library raises on purpose."""

    exit_code = EXIT_FAILURE


class UsageError(FacenetError):
    """Bad option values, missing folders, contradicting arguments."""

    exit_code = EXIT_USAGE


class BadImage(FacenetError):
    """A file that cannot be decoded as an image (corrupt, truncated, empty, not an image)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NoFace(FacenetError):
    """No face was found in an image."""


class NothingFound(FacenetError):
    """The inputs were read but none holds a face to work on; one exit code for every command."""

    exit_code = EXIT_NOTHING_FOUND


class MultipleFaces(FacenetError):
    """Several faces were found where exactly one was asked for."""


class UnknownModel(FacenetError):
    """A model name that is neither in the catalogue nor a checkpoint file."""

    exit_code = EXIT_USAGE


class ChecksumMismatch(FacenetError):
    """A weights or model file whose SHA-256 is not the one its record names."""


class DownloadError(FacenetError):
    """A weights download that failed or was cut off."""


class SpecMismatch(FacenetError):
    """An aligned folder made for another alignment spec than the model needs."""


class DataError(FacenetError):
    """A malformed input data file (pairs file, labels.csv, reps, checkpoint) or inconsistent inputs."""


class DiskFull(FacenetError):
    """The disk (or quota) ran out while writing; what was finished before is kept."""


class WriteError(FacenetError):
    """An output could not be written for another reason than a full disk (permissions, read-only)."""


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def write_error(exc: OSError, path: str | os.PathLike) -> FacenetError:
    """The one-sentence error for an OSError raised while writing `path`."""
    if is_disk_full(exc):
        return DiskFull(f"The disk is full while writing {path}; free some space and rerun the same command "
                        "to resume (finished outputs are kept).")
    reason = exc.strerror or type(exc).__name__
    return WriteError(f"Cannot write {path} ({reason}); choose a folder you can write to.")
