"""The Typer app and what every command shares. The only place (with its siblings) where
typer and rich output live; the library never imports this package."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from ..catalogue import DEFAULT_MODEL  # noqa: F401 (re-exported for ModelOption's default)
from ..errors import FacenetError

app = typer.Typer(
    name="facenet",
    help="Face recognition in the spirit of FaceNet and OpenFace: align, represent, compare, "
    "measure on LFW and train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Sentences are never wrapped mid-path (copyable, greppable); tables still fit the terminal.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    """Print one plain sentence on stderr and exit non-zero (no traceback)."""
    err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def command(fn: Callable | None = None, **settings) -> Callable:
    """Register a command whose library errors become `Error: ...` and exit code 1.

    `settings` go to Typer's `app.command` (e.g. context_settings), as `@command(...)`.
    """
    if fn is None:
        return lambda f: command(f, **settings)

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
    return app.command(name, **settings)(wrapper)


# Shared options. Annotated cannot carry a default, so commands write
# `model: ModelOption = DEFAULT_MODEL` (re-exported here) and `cache_dir: CacheDirOption = None`.
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="A catalogue name (see `facenet fetch-models --list`) or the path of a checkpoint "
        "file saved by `facenet train`.",
    ),
]
CacheDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir",
        help="Where downloaded weights are kept (default: $FACENET_CACHE, else the per-user cache folder).",
        file_okay=False,
    ),
]




DeviceOption = Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when there is one), cpu or cuda.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", help="Faces per forward pass.")]
FlipOption = Annotated[bool, typer.Option(
    "--flip/--no-flip", help="Average each face's embedding with its mirror image's (slower, often more accurate).")]


def load_embedder(model: str, device: str = "auto", batch_size: int = 32, flip: bool = False):
    """Resolve --model through the catalogue (or a checkpoint) and load its network once."""
    from ..embed import Embedder
    from ..hub import resolve_model

    return Embedder(resolve_model(model), device=device, flip=flip, batch_size=batch_size)
