"""Executors: where the batch work of a use case runs (this machine's processes, or a Ray cluster).

A use case never starts processes itself; it asks for an executor and maps a function over its
items. The `Executor` protocol is all it may use:

    class Executor(Protocol):
        name: str        # "local", "ray", ... (the --executor value)
        workers: int     # processes that find and align faces (Ray: tasks in flight at most)
        def __enter__(self) -> Executor: ...
        def __exit__(self, *exc) -> None: ...
        def map(self, function, items, *, setup=None, ordered=True) -> Iterator[tuple[int, result]]

`map` calls `function(item)` for every item somewhere (a forked process, a Ray worker, or this
process) and yields `(index of the item, result)`: in the items' order with `ordered`, else as
each one finishes (a journal records finished work at once). `setup()`, when given, runs once in
each process before its first item (load the models, remember a job); it is run in this process
first by the caller when models should be verified and shared before workers start. An exception
raised by `function` (DiskFull, ...) ends the map and is raised here; workers lost for good (a
killed process the executor cannot replace) raise `WorkersLost`; leaving early (an exception, a
Ctrl-C, a generator closed) stops every worker at once. Items, results (and for executors on
other machines, `function` and `setup`) must pickle.

    with get_executor("local", workers=4) as executor:
        for index, faces in executor.map(find_faces, photos):
            ...

The built-in executors are local.py (a process pool forked from this process, so the workers
share the loaded models and die with it) and ray.py. A new executor is one new file in this
folder that calls `register_executor("name", factory)` at import: `get_executor("name")` then
imports it (by its file name) and the CLI's --executor offers it. Executors import nothing of the
pipeline: they move functions and items, the pipeline says what runs (FacePipeline.photos).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar, runtime_checkable

from ..errors import UsageError

Item = TypeVar("Item")
Result = TypeVar("Result")


class WorkersLost(Exception):
    """An executor lost its workers for good: the local pool broke, or Ray gave up retrying."""


@runtime_checkable
class Executor(Protocol):
    """Runs a function over many items, in worker processes (see the module docstring)."""

    name: str
    workers: int

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc) -> Any: ...

    def map(self, function: Callable[[Item], Result], items: Iterable[Item], *,
            setup: Callable[[], object] | None = None, ordered: bool = True) -> Iterator[tuple[int, Result]]:
        """(index, function(item)) for every item; in order with `ordered`, else as finished."""
        ...


@runtime_checkable
class EmbedsBatches(Protocol):
    """An executor that can also hold a network in long-lived workers (Ray's actor pool) and
    run `function(embedder, batch)` on every batch there, yielding the results in order. Jobs
    that embed many crops (represent) use it when the executor offers it, else embed here."""

    def embed_batches(self, function: Callable[[Any, Item], Result], batches: list[Item],
                      pipeline: Any) -> Iterator[Result]: ...


# name -> factory(workers, **settings) -> Executor
_REGISTRY: dict[str, Callable[..., Executor]] = {}
DEFAULT_EXECUTOR = "local"
# The files of this folder, each an executor named as its file (listed without importing them,
# so --help stays light): the default first.
BUILTIN_EXECUTORS = tuple(sorted((path.stem for path in Path(__file__).parent.glob("*.py")
                                  if not path.stem.startswith("_")), key=lambda name: (name != DEFAULT_EXECUTOR, name)))


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make `name` an executor: `factory(workers=None, **settings)` returns one. ValueError when
    the name is taken by another factory."""
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"an executor named {name!r} is registered already")
    _REGISTRY[name] = factory


def executor_names() -> tuple[str, ...]:
    """The built-in executors, then any registered at run time."""
    return BUILTIN_EXECUTORS + tuple(name for name in _REGISTRY if name not in BUILTIN_EXECUTORS)


def get_executor(name: str | None = None, workers: int | None = None, **settings) -> Executor:
    """The executor called `name` (None: "local") with `workers` processes (None: the executor's
    default: one per CPU for local, the cluster's CPUs for Ray). `settings`: the executor's own
    (Ray: `address`). Not entered yet: use it as a context manager. UsageError for an unknown
    name or fewer than one worker."""
    name = getattr(name, "value", name) or DEFAULT_EXECUTOR
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}.")
    if name not in _REGISTRY and name.isidentifier():
        try:  # a file of this folder registers itself when imported
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    if name not in _REGISTRY:
        raise UsageError(f"--executor must be one of {', '.join(executor_names())}, not {name!r}.")
    return _REGISTRY[name](workers=workers, **settings)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


__all__ = ["BUILTIN_EXECUTORS", "DEFAULT_EXECUTOR", "EmbedsBatches", "Executor", "WorkersLost", "cpu_count", "executor_names",
           "get_executor", "register_executor"]
