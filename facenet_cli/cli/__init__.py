"""`facenet` command line: one small module per command, all registered on one Typer app."""
from __future__ import annotations

from ._app import app

# Each import registers its command(s) on `app`.
from . import (align, cluster, compare, demo, fetch_models, gallery, identify, lfw_roc,  # noqa: F401,E402
               represent, serve, train, tsne)


def main() -> None:
    app()
