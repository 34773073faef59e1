"""The Typer app and what every command shares. The only place (with its siblings) where
typer and rich output live; the library never imports this package."""
from __future__ import annotations

import functools
import sys
from typing import Callable

import typer
from rich.console import Console

from ..errors import FacenetError

app = typer.Typer(
    name="facenet",
    help="Face recognition in the spirit of FaceNet and OpenFace: align, represent, compare, "
    "measure on LFW and train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print one plain sentence on stderr and exit non-zero (no traceback)."""
    err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def command(fn: Callable) -> Callable:
    """Register a command whose library errors become `Error: ...` and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FacenetError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err_console.print("Interrupted; rerun the same command to resume.")
            raise typer.Exit(130)

    name = fn.__name__.replace("_command", "").replace("_", "-")
    return app.command(name)(wrapper)


def is_tty() -> bool:
    return sys.stdout.isatty()
