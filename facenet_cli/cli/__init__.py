"""`facenet` command line: one small module per command, all registered on one Typer app."""
from __future__ import annotations

from ._app import app

# Each import registers its command(s) on `app`.
from . import align as _align  # noqa: F401,E402

# Commands added by later stages register here too; a missing module is a bug, not optional.


def main() -> None:
    app()
