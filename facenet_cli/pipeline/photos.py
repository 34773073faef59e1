"""Where photos come from for `gallery add` and `identify`: one listing, with `align`'s policy.

A folder is listed by `jobs.scan_tree`, the walker `align` uses, so the rules are the same
everywhere: links to files are read; links to folders are never entered (a tree cannot loop,
leave itself, or hand one person's photos to another), hidden entries are skipped, each with
why; special files and broken links cannot be read; names with a line break or another control
character are refused (`bad-name`: they cannot be carried through CSV files, reports and
exports). Regular files whose names are not images are not photos and are left out. A path
named on the command line is taken as given (a link to a photo or a folder is followed), but its
name is checked the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..formats.aligned import looks_like_image, name_problem, printable_name

# scan_tree settles special files and broken links as `skipped`, like hidden entries and links
# to folders; for the readers of photos they are files that cannot be read, as they always were.
_UNREADABLE = ("not a regular file", "broken link", "cannot be read")


@dataclass(frozen=True)
class Refused:
    """An entry that is not read: its path as shown (control characters escaped), its path
    relative to the listed folder ("" when named directly), `skipped`, `unreadable` or
    `bad-name`, and why."""

    path: str
    rel: str
    status: str
    detail: str


@dataclass
class PhotoListing:
    photos: list[tuple[str, str]] = field(default_factory=list)  # (path to read, relative to its folder)
    refused: list[Refused] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return len(self.photos) + len(self.refused)

    def names(self) -> list[str]:
        """How outputs name the photos: by their path relative to the folder given, never by the
        file name alone (`ben/x.jpg` and `ada/x.jpg` stay apart); a photo named directly keeps its
        path as given. When that names two photos alike (folders `val/ben` and `val/ada` given,
        both holding `x.jpg`), every photo is named by its path as given instead."""
        return self._names(self.photos)

    def refused_names(self) -> list[str]:
        """The refused entries, named as `names` names photos (control characters escaped)."""
        return self._names([(r.path, printable_name(r.rel) if r.rel not in ("", ".") else "") for r in self.refused])

    def _names(self, entries: list[tuple[str, str]]) -> list[str]:
        relative = [rel or path for path, rel in entries]
        everyone = [rel or path for path, rel in self.photos] + [r.rel or r.path for r in self.refused]
        if len(set(everyone)) == len(everyone):
            return relative
        return [path for path, _ in entries]


def list_folder(folder: str | os.PathLike) -> PhotoListing:
    """The photos under `folder` (sorted, align's order) and the entries settled without reading."""
    from ..align.job import scan_tree

    folder = Path(folder)
    listing = scan_tree(folder)
    result = PhotoListing()
    result.photos = [(str(folder / rel), rel) for rel in listing.files if looks_like_image(rel)]
    shown = printable_name(str(folder))
    for outcome in listing.settled:
        status = outcome.status
        if status == "skipped" and outcome.detail.startswith(_UNREADABLE):
            status = "unreadable"
        path = shown if outcome.input == "." else str(Path(shown, outcome.input))
        result.refused.append(Refused(path, outcome.input, status, outcome.detail))
    return result


def path_problem(path: str | os.PathLike) -> str | None:
    """Why a photo's path cannot be a gallery source or a report's cell (a control character,
    undecodable bytes), or None."""
    return name_problem(str(path))


def list_photos(inputs: Sequence[str | os.PathLike]) -> PhotoListing:
    """Photos named directly (taken as given, names checked) and every photo under folders."""
    result = PhotoListing()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_folder(path)
            result.photos += found.photos
            result.refused += found.refused
        elif path_problem(path):
            result.refused.append(Refused(printable_name(str(path)), "", "bad-name", path_problem(path)))
        else:
            result.photos.append((str(path), ""))
    return result
