"""Typed errors. Each message is one sentence that says what went wrong and how to fix it.

The library raises these; only the CLI turns them into `Error: ...` and exit code 1.
"""
from __future__ import annotations


class FacenetError(Exception):
    """Base class for every error the library raises on purpose."""


class UsageError(FacenetError):
    """Bad option values, missing folders, contradicting arguments."""


class BadImage(FacenetError):
    """A file that cannot be decoded as an image (corrupt, truncated, empty, not an image)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NoFace(FacenetError):
    """No face was found in an image."""


class MultipleFaces(FacenetError):
    """Several faces were found where exactly one was asked for."""


class UnknownModel(FacenetError):
    """A model name that is neither in the catalogue nor a checkpoint file."""


class ChecksumMismatch(FacenetError):
    """A weights file whose SHA-256 is not the one its record names."""


class DownloadError(FacenetError):
    """A weights download that failed or was cut off."""


class SpecMismatch(FacenetError):
    """An aligned folder made for another alignment spec than the model needs."""


class DataError(FacenetError):
    """A malformed input data file (pairs file, labels.csv, reps) or inconsistent inputs."""
