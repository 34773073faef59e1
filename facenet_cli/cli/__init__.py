"""`facenet` command line: one small module per command, all registered on one Typer app."""
from __future__ import annotations

from ._app import app

# Each import registers its command(s) on `app`.
from . import align, compare, demo, fetch_models, lfw_roc, represent, train, tsne  # noqa: F401,E402


def main() -> None:
    app()
