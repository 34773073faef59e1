"""An executor defined in the tests, in one file: importing it registers "inline-test", and every
batch use case can then run on it (tests/test_executors.py). It runs each item here, and
gives the results of an unordered map last item first, so a job that relied on the order of
finished work would show it."""
from __future__ import annotations

from facenet_cli.executors import register_executor


class InlineExecutor:
    name = "inline-test"

    def __init__(self, workers: int | None = None):
        self.workers = workers or 1
        self.items = 0  # items run, over every map
        self.setups = 0

    def __enter__(self) -> "InlineExecutor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, function, items, *, setup=None, ordered=True):
        items = list(items)
        if setup is not None:
            setup()
            self.setups += 1
        order = range(len(items)) if ordered else reversed(range(len(items)))
        for index in order:
            self.items += 1
            yield index, function(items[index])


register_executor("inline-test", InlineExecutor)
