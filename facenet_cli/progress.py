"""The one progress protocol of the library: use cases take `progress=` and report through it.

    class Progress(Protocol):
        def start(self, total: int | None) -> None      # the work (or its current stage) has `total` units
        def advance(self, count: int = 1) -> None       # `count` more units are done
        def stage(self, name: str, total: int | None) -> None  # a new stage begins: its own count

A job of one stage calls `start` once, then `advance` until the units add up to `total`; a job of
several (align, then embed) calls `stage` at the start of each. The CLI's bar
(cli/_progress.CountingProgress) implements it; `NO_PROGRESS` ignores everything, and is what a
use case gets when the caller passes none. This module imports nothing heavy.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    """Where a long job reports how far it is (see the module docstring)."""

    def start(self, total: int | None) -> None: ...

    def advance(self, count: int = 1) -> None: ...

    def stage(self, name: str, total: int | None) -> None: ...


class NoProgress:
    """Progress that goes nowhere: the default of every use case."""

    def start(self, total: int | None) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass

    def stage(self, name: str, total: int | None) -> None:
        pass


NO_PROGRESS = NoProgress()


def progress_or_none(progress: Progress | None) -> Progress:
    """`progress`, or NO_PROGRESS when the caller gave none."""
    return NO_PROGRESS if progress is None else progress


__all__ = ["NO_PROGRESS", "NoProgress", "Progress", "progress_or_none"]
