"""`facenet` command line: one small module per command, all registered on one Typer app."""
from __future__ import annotations

from ._app import app, lazy_group

# Each import registers its command(s) on `app`.
from . import (align, cluster, compare, demo, fetch_models, gallery, identify, lfw_roc,  # noqa: F401,E402
               represent, search, serve, train, tsne)


def main() -> None:
    # Not `app()`: that builds every command from its signature first; `facenet compare ...`
    # needs one, `facenet --help` none (their names and summaries suffice).
    lazy_group()()
