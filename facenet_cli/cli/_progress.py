"""Rich progress bars shared by the long-running commands (on stderr: stdout stays clean for
tables and --json)."""
from __future__ import annotations

import os
import time

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ._app import err_console


def progress_shown(quiet: bool = False) -> bool:
    """Whether progress is drawn: never with --quiet, and never when stderr is not a terminal (a
    log file or a pipe would get every redraw, or at least the bar's last line). Only the stream
    decides, not FORCE_COLOR (set in many CI jobs, which rich takes for a terminal);
    TTY_COMPATIBLE=1 or 0, rich's own setting, overrides it."""
    if quiet:
        return False
    forced = os.environ.get("TTY_COMPATIBLE", "")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(err_console.file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(quiet: bool = False) -> Progress:
    """A bar on stderr; a disabled one (draws nothing, not even a blank line) when
    `progress_shown` says no."""
    return Progress(
        # markup=False: TextColumn parses its text as markup by default, and a description may
        # hold a user's string (`[/x]` would raise MarkupError mid-run).
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, transient=False, disable=not progress_shown(quiet),
    )


# The unit each stage of the library's jobs counts in (progress.Progress.stage names).
STAGE_UNITS = {"Aligning": "entries/s", "Embedding": "faces/s", "Finding faces": "photos/s",
               "Identifying": "photos/s", "Clustering": "faces/s"}


class CountingProgress:
    """A bar that appears only when the work starts, so a usage error found first stays one line
    on stderr, and counts items at a rate. It is the library's progress protocol
    (progress.Progress: start, advance, stage): hand it to a use case as `progress=`; use it as
    a context manager.

        with CountingProgress("Aligning", "entries/s") as bar:
            align_tree(raw, out, job, progress=bar)
    """

    def __init__(self, description: str, unit: str = "/s", quiet: bool = False):
        self.description, self.unit = description, unit
        self._progress = progress_bar(quiet)
        self._task = None
        self._done = 0
        self._started = time.perf_counter()

    def start(self, total: int | None) -> None:
        if self._task is None:
            self._progress.start()
            self._started = time.perf_counter()
            self._task = self._progress.add_task(self.description, total=total, rate="")
        else:
            self._progress.update(self._task, total=total)

    def advance(self, count: int = 1) -> None:
        if self._task is None:
            self.start(None)
        self._done += count
        rate = self._done / max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(self._task, completed=self._done, rate=f"{rate:.1f} {self.unit}")

    def stage(self, description: str, total: int | None = None, unit: str | None = None) -> None:
        """A job of several stages: mark the current one done and count the next on its own line."""
        self._complete()
        self.description, self._task, self._done = description, None, 0
        self.unit = unit or STAGE_UNITS.get(description, self.unit)
        self.start(total)

    # The names of the callbacks before the progress protocol, for callers not yet moved.
    on_start = start
    on_advance = advance

    def _complete(self) -> None:
        if self._task is not None:
            done = max(self._done, 1)
            self._progress.update(self._task, total=done, completed=done)

    def __enter__(self) -> "CountingProgress":
        return self

    def __exit__(self, exc_type, *exc) -> bool:
        if self._task is not None:  # stopping a bar never shown would still print a blank line
            if exc_type is None:
                self._complete()
            self._progress.stop()
        return False
