"""`--executor local`: a pool of processes forked from this one.

Forked, so the workers share the models this process loaded before the pool started (the
caller runs `setup` here first) and need no re-import of __main__ (works from notebooks and
stdin scripts); `function` and `setup` reach them by fork and need not pickle, items and results
do. Each worker dies with this process (even when it is killed with -9) and ignores Ctrl-C,
which is this process's to handle: it stops the pool and kills the workers mid-item. Finding
and aligning faces touches neither torch nor OpenMP, so forking a parent that imported them is
safe; a step that runs torch in a worker keeps it to one thread there (as DataLoader workers do).

With one worker, or one item, everything runs here, in order, with no process started.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from multiprocessing import get_all_start_methods, get_context
from typing import Callable, Iterable, Iterator

from . import WorkersLost, cpu_count, register_executor

PR_SET_PDEATHSIG = 1
AHEAD_PER_WORKER = 4  # items submitted per worker ahead of the results: keeps workers busy, bounds memory


def die_with_parent(parent_pid: int, use_prctl: bool = True) -> None:
    """Make this worker process end when its parent dies (even by kill -9), so no orphan goes
    on working: Linux's PR_SET_PDEATHSIG, else a thread that polls the parent's pid."""
    if use_prctl and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="facenet-parent-watch", daemon=True).start()


_FUNCTION: Callable | None = None  # the map's function, in a forked worker


def _start_worker(function: Callable, setup: Callable | None, parent_pid: int) -> None:
    global _FUNCTION
    die_with_parent(parent_pid)  # no orphan when the parent is killed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _FUNCTION = function
    if setup is not None:
        setup()


def _call(item):
    return _FUNCTION(item)


class LocalExecutor:
    """Forked worker processes on this machine (see the module docstring)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = cpu_count() if workers is None else workers

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, function: Callable, items: Iterable, *, setup: Callable | None = None,
            ordered: bool = True) -> Iterator[tuple[int, object]]:
        items = list(items)
        workers = min(self.workers, len(items))
        if workers < 2 or "fork" not in get_all_start_methods():
            if setup is not None:
                setup()
            for index, item in enumerate(items):
                yield index, function(item)
            return
        yield from self._pool_map(function, items, setup, ordered, workers)

    def _pool_map(self, function, items, setup, ordered, workers):
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"),
                                   initializer=_start_worker, initargs=(function, setup, os.getpid()))
        queue = iter(enumerate(items))
        pending: dict = {}
        finished: dict[int, object] = {}
        wanted = 0  # ordered: the next index to yield

        def submit(count: int) -> None:
            for index, item in islice(queue, count):
                pending[pool.submit(_call, item)] = index

        try:
            submit(workers * AHEAD_PER_WORKER)
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        result = future.result()  # re-raises what the function raised
                    except BrokenProcessPool:  # a worker died (killed, or out of memory); no more detail
                        raise WorkersLost() from None
                    if ordered:
                        finished[index] = result
                    else:
                        yield index, result
                    submit(1)
                while ordered and wanted in finished:
                    yield wanted, finished.pop(wanted)
                    wanted += 1
        except BaseException:
            stop(pool)
            raise
        pool.shutdown(wait=True)


def stop(pool: ProcessPoolExecutor) -> None:
    """Stop at once: cancel what is queued and kill the workers (they may be mid-item)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    results = getattr(pool, "_result_queue", None)  # shutdown() forgets it
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):
            pass
    for process in processes:
        process.join(timeout=5)
    # A worker killed while it wrote a result leaves the pool's manager thread waiting for the
    # rest of that message forever (this process holds the pipe's write end too), and Python
    # joins that thread at exit: the process never ended. Our write end closed, it reads the
    # end of the pipe instead and winds the pool up.
    writer = getattr(results, "_writer", None)
    if writer is not None:
        writer.close()
    if manager is not None:
        manager.join(timeout=10)  # it reaps the killed workers, so their pids read as dead


register_executor("local", LocalExecutor)

__all__ = ["LocalExecutor", "die_with_parent", "stop"]
