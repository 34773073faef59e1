"""Which gallery store a location opens: `open_store(location)`.

A backend module registers itself with `register_store(match, opener)`: `match` is a URL scheme
(`"postgresql"` takes `postgresql://...` locations) or a predicate on the location; `opener` is
called as `opener(location, create=, read_only=, timeout=, salvage=)` and returns a
`GalleryStore` (store/protocol.py). The built-in backends (the SQLite file, store/sqlite.py, which
takes every location that is a path; PostgreSQL, store/postgres.py, for `postgresql://` URLs) are
imported when a location is first opened, so adding a backend is one new module and, for a
built-in one, its name in `_BUILTINS`.

The use cases take a store or a location (`opened_store`): a command opens its store once and
hands it to every step; a library call may give a path.
"""
from __future__ import annotations

import importlib
import os
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Union

from ..errors import UsageError
from .types import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from .protocol import GalleryStore

Location = Union[str, "os.PathLike[str]"]
Opener = Callable[..., "GalleryStore"]

_BUILTINS = ("sqlite", "postgres")  # modules of this package that register a backend, imported on first use
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: never a Windows drive
_by_scheme: dict[str, Opener] = {}
_by_predicate: list[tuple[Callable[[str], bool], Opener]] = []
_builtins_loaded = False


def register_store(match: str | Callable[[str], bool], opener: Opener) -> None:
    """Make `opener` open the locations `match` takes: a scheme (`"memory"` takes `memory:...`)
    or a predicate on the location text. Schemes are tried first, then predicates, the last
    registered first (so a test or plugin may take over locations a built-in takes)."""
    if isinstance(match, str):
        _by_scheme[match.lower()] = opener
    else:
        _by_predicate.insert(0, (match, opener))


def scheme_of(location: str) -> str | None:
    found = _SCHEME.match(location)
    return found.group(1).lower() if found else None


def shown_location(location: "Location") -> str:
    """A location as messages, logs and `--json` show it: a URL's password (`user:SECRET@`, or a
    `password=` parameter) replaced by `***`; a path as it is. Every place that shows a location
    a user typed goes through this (a store's own `location` already does)."""
    if not isinstance(location, (str, os.PathLike)):  # an opened store shows its own (masked) location
        return str(location.location)
    text = os.fspath(location)
    if scheme_of(text) is None:
        return text
    text = URL_USER_PASSWORD.sub(r"\1:***@", text)  # also `scheme:/user:pw@` (a Path folds the `//`)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", text, flags=re.IGNORECASE)


URL_USER_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+:/*[^/@?#:]*):([^@/?#]*)@")


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTINS:
            importlib.import_module(f"{__package__}.{module}")


def open_store(location: Location, *, create: bool = False, read_only: bool | None = None,
               timeout: float = DEFAULT_TIMEOUT, salvage: bool = False) -> "GalleryStore":
    """The gallery at `location`, opened by the backend registered for it.

    `create`: for writing; a missing gallery is made (by its first faces, for the SQLite file).
    `read_only`: True refuses every write; None (default): read-only only where the user cannot
    write. `timeout`: seconds a writer waits for another. `salvage`: open a gallery whose own
    records are damaged, to list it (`check_integrity` then says what is wrong)."""
    _load_builtins()
    text = os.fspath(location)
    options = {"create": create, "read_only": read_only, "timeout": timeout, "salvage": salvage}
    scheme = scheme_of(text)
    if scheme is not None and scheme in _by_scheme:
        return _by_scheme[scheme](text, **options)
    for predicate, opener in _by_predicate:
        if predicate(text):
            return opener(location, **options)
    why = f" (no backend is installed for {scheme}: locations)" if scheme else ""
    raise UsageError(f"No gallery store opens {shown_location(text)!r}{why}; give a gallery file.")


def is_store(value: object) -> bool:
    """Whether `value` is an opened store rather than a location."""
    return not isinstance(value, (str, os.PathLike)) and hasattr(value, "enrolment") and hasattr(value, "add_faces")


@contextmanager
def opened_store(store_or_location: "GalleryStore | Location", **options) -> Iterator["GalleryStore"]:
    """The store itself when given one (left open: its opener closes it), else the store at the
    location, opened with `options` (as `open_store`) and closed after."""
    if is_store(store_or_location):
        yield store_or_location  # type: ignore[misc]
        return
    with open_store(store_or_location, **options) as store:
        yield store
