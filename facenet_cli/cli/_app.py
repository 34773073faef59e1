"""The Typer app and what every command shares. The only place (with its siblings) where
typer and rich output live; the library never imports this package.

Command modules import the engine inside their functions, never at module level, so that
`facenet --help` loads no numpy, dlib, OpenCV or torch (tests/test_cli_grammar.py checks it).

Exit codes (one convention for our errors and the parser's): 0 done, 1 the job failed,
2 usage error, 130 interrupted; see facenet_cli/errors.py.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from ..choices import (DEFAULT_MODEL, Detector, Device, Executor, FacePolicy, Fallback, Precision,  # noqa: F401
                       Upsample)  # (re-exported)
from ..detect import detector_help
from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, FacenetError, is_disk_full, write_error

# Sentences are never wrapped mid-path (copyable, greppable); tables still fit the terminal.
# Markup and emoji codes off: paths and names are user text (`[/x]` would raise MarkupError,
# `[b]Ada` print as Ada, `:smile:` as an emoji); styling is done with rich.text.Text.
console = Console(soft_wrap=True, markup=False, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)


def _print_error(message: str) -> None:
    # Under torchrun (or `train --nproc-per-node`) every rank meets the same error: rank 0 says it.
    if _other_rank():
        import os
        import time

        if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun stops every rank when one exits: rank 0 first
            time.sleep(3)
        return
    err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)


def _other_rank() -> bool:
    """True in rank 1, 2, ... of a distributed launch (WORLD_SIZE > 1); they exit quietly."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1 and int(os.environ.get("RANK") or 0) != 0
    except ValueError:
        return False


def _plain_error(message: str, code: int) -> None:
    _print_error(message)
    sys.exit(code)


class _Deferred(type):
    """A stand-in class for `module.name` that imports the real one when called or asked for an
    attribute (`Traceback.from_exception`); `|` in annotations works as on any class."""

    def __call__(cls, *args, **kwargs):
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(cls._real(), attr)

    def _real(cls):
        import importlib

        return getattr(importlib.import_module(cls.__module__), cls.__name__)


# What typer's help renderer imports at its top but uses only for markup_mode="markdown" and for
# pretty tracebacks, neither of which facenet uses: together about half of `facenet --help`'s
# CPU time (markdown-it, pygments, rich's Syntax).
_HELP_RENDERER_EXTRAS = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


def _import_help_renderer() -> None:
    """Import `typer.rich_utils` with stand-ins for rich.markdown's Markdown and rich.traceback's
    Traceback, which import the real modules if they are ever used; the help it renders is the
    same (tests/test_startup.py compares it with a plain import's)."""
    if "typer.rich_utils" in sys.modules:
        return
    import types

    stand_ins = {}
    for module, name in _HELP_RENDERER_EXTRAS.items():
        if module not in sys.modules:
            stand_ins[module] = types.ModuleType(module)
            setattr(stand_ins[module], name, _Deferred(name, (), {"__module__": module}))
    sys.modules.update(stand_ins)
    try:
        import typer.rich_utils  # noqa: F401
    except ImportError:  # a typer that wants more of those modules than the stand-ins offer
        stand_ins_failed = True
    else:
        stand_ins_failed = False
    finally:
        for module, stand_in in stand_ins.items():  # later imports get the real modules
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]
    if stand_ins_failed:
        import typer.rich_utils  # noqa: F401,F811 (the plain, slower import)


class FacenetGroup(TyperGroup):
    """Parser errors (unknown option, bad choice, missing argument) end like ours: one
    `Error: ...` line on stderr and exit code 2, not a framed box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
        except KeyboardInterrupt:  # before a command started (its own hint says what a rerun does)
            _plain_error("interrupted before the command started; nothing was done.", EXIT_INTERRUPTED)
        except Exception as exc:  # the parser's own exception types live in typer's vendored click
            if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
                message = exc.format_message().rstrip(".")
                command = getattr(getattr(exc, "ctx", None), "command_path", "facenet")
                _plain_error(f"{message}; see `{command} --help`.", EXIT_USAGE)
            if type(exc).__name__ == "Abort":
                _plain_error("aborted.", EXIT_INTERRUPTED)
            raise
        code = result if isinstance(result, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    def format_help(self, ctx, formatter):
        _import_help_renderer()
        return super().format_help(ctx, formatter)

    def resolve_command(self, ctx, args):
        """The command to run, built from its function now if it was listed lazily."""
        name, found, rest = super().resolve_command(ctx, args)
        if isinstance(found, _LazyCommand):
            found = self.commands[name] = found.build()
        return name, found, rest


class FacenetCommand(TyperCommand):
    """A command whose --help imports typer's renderer the light way, and whose float options
    are refused when not finite."""

    def collect_usage_pieces(self, ctx):
        """Usage lines name the arguments as the docs do (`GALLERY PHOTOS...`, `[OUT]`), not as
        this typer's `{gallery} {photos}...`; an argument's own metavar wins."""
        shown = {}
        for param in self.get_params(ctx):
            if param.param_type_name == "argument" and hasattr(param, "_usage_display_name"):
                name = param.metavar or param.name.upper()
                name = name if param.required else f"[{name}]"
                shown[param._usage_display_name()] = name + ("..." if param.nargs != 1 else "")
        return [shown.get(piece, piece) for piece in super().collect_usage_pieces(ctx)]

    def format_help(self, ctx, formatter):
        _import_help_renderer()
        return super().format_help(ctx, formatter)

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        check_finite_options(self, ctx)
        return rest


def check_finite_options(command, ctx) -> None:
    """Every float option of every command in one place: `nan`, `inf` and `1e999` parse as
    floats, but no threshold, rate or weight means anything there, and they would end up as
    NaN/Infinity in --json. A usage error (exit 2, one sentence) instead. Checked on the parsed
    values (a float-typed option parses to a Python float), whatever typer's parameter types."""
    import math

    for param in command.params:
        value = ctx.params.get(param.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                name = param.opts[0] if param.opts else param.name
                ctx.fail(f"{name} must be a finite number, not {item}")  # the parser's usage error


class _LazyCommand(TyperCommand):
    """A command's name and help only, for the group's command list; `build` makes the real one.

    Typer turns a function into a click command by evaluating every annotation of its signature
    (~4 ms a command here); `facenet --help` needs only the names and summaries, and
    `facenet compare ...` only compare's parameters.
    """

    def __init__(self, name: str, help: str | None, build: Callable[[], Any], **listing):
        super().__init__(name=name, help=help, **listing)
        self.build = build


app = typer.Typer(
    name="facenet",
    cls=FacenetGroup,
    help="Face recognition in the spirit of FaceNet and OpenFace: align, represent, compare, measure on "
    "LFW, train, identify people from a gallery, cluster, and serve a live demo.\n\n"
    "One grammar: inputs, then outputs, are arguments; one option name means one thing in every command "
    "(the face-pipeline options --model, --detector, --upsample, --faces, --device, --precision, --flip, --tta, "
    "--batch-size; --workers: processes that find and align faces; --executor local|ray; --top N: results per "
    "face, best first); --json or --csv (not both) print results on stdout, --quiet draws no progress (none is "
    "drawn off a terminal either).\n\n"
    "Exit codes: 0 done, 1 the job failed, 2 usage error, 3 the inputs hold no face to work on, 130 interrupted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def lazy_group(typer_app: typer.Typer | None = None) -> FacenetGroup:
    """The click group of `typer_app` (default: `app`) whose commands are built when first run
    (or asked for their own --help); what `facenet` runs. Listing them shows exactly what
    `typer.main.get_command(app)` would (tests/test_startup.py compares the two)."""
    import typer.main as typer_main

    typer_app = typer_app or app
    shell = copy.copy(typer_app)  # the group itself (name, help, settings) without its commands
    shell.registered_commands, shell.registered_groups = [], []
    group = typer_main.get_group(shell)
    settings = {"pretty_exceptions_short": typer_app.pretty_exceptions_short,
                "rich_markup_mode": typer_app.rich_markup_mode}
    for info in typer_app.registered_commands:
        name = info.name or typer_main.get_command_name(info.callback.__name__)
        help_text = inspect.cleandoc(info.help) if info.help is not None else inspect.getdoc(info.callback)
        group.add_command(_LazyCommand(
            name, help_text, functools.partial(typer_main.get_command_from_info, info, **settings),
            short_help=info.short_help, hidden=info.hidden, deprecated=info.deprecated,
            rich_help_panel=info.rich_help_panel), name)
    for info in typer_app.registered_groups:
        solved = typer_main.solve_typer_info_defaults(info)
        if not solved.name:  # a nameless sub-app lends its commands to the group: built now
            sub_group = typer_main.get_group_from_info(info, suggest_commands=typer_app.suggest_commands, **settings)
            for name, sub_command in sub_group.commands.items():
                group.add_command(sub_command, name)
            continue
        group.add_command(_LazyCommand(
            solved.name, solved.help,
            functools.partial(typer_main.get_group_from_info, info, suggest_commands=typer_app.suggest_commands,
                              **settings),
            short_help=solved.short_help, hidden=solved.hidden, deprecated=solved.deprecated,
            rich_help_panel=solved.rich_help_panel), solved.name)
    return group


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print one plain sentence on stderr and exit non-zero (no traceback)."""
    _print_error(message)
    raise typer.Exit(code)


def _quoted(path: Any) -> str:
    import shlex

    return shlex.quote(str(path))


def _train_interrupted(resume_dir: Any = None, out: Any = None, **_: Any) -> str:
    """train keeps every finished epoch in OUT/last.pt; the same command is refused once it
    exists (OUT holds a run), so the hint depends on whether an epoch finished."""
    run = resume_dir or out
    if run is not None and (Path(run) / "last.pt").is_file():
        return (f"interrupted; the finished epochs are kept, `facenet train --resume {_quoted(run)}` continues "
                "from the last one.")
    return "interrupted before the first epoch finished, so nothing was kept; rerun the same command to start again."


def _represent_interrupted(out: Any = None, photos: bool = False, **_: Any) -> str:
    """represent streams into temporary files renamed only at the end; --photos aligns first,
    into OUT/aligned, which resumes like `facenet align`."""
    if photos:
        return (f"interrupted; the faces aligned so far are kept in {Path(out) / 'aligned'}: rerun the same command "
                "to resume aligning, then every face is embedded again.")
    return f"interrupted; {out} is as it was before this run, rerun the same command to embed every image again."


# What a rerun does after Ctrl-C, per command (the hint must be true: only align and the
# alignment stage of others resume). A string, or a function of the command's arguments.
INTERRUPTED: dict[str, str | Callable[..., str]] = {
    "align": "interrupted; rerun the same command to resume.",
    "represent": _represent_interrupted,
    "compare": "interrupted; compare writes nothing, rerun the same command to compare again.",
    "lfw-roc": "interrupted; rerun the same command to measure again from the start.",
    "tsne": "interrupted; rerun the same command to make the map again from the start.",
    "train": _train_interrupted,
    "fetch-models": "interrupted; the files fetched and verified so far are kept, rerun the same command to fetch "
                    "the rest.",
    "demo": "interrupted; rerun the same command to run the demo again.",
    "identify": "interrupted; no answer was printed, rerun the same command to identify from the start.",
    "cluster": "interrupted; rerun the same command to cluster again (photos already aligned into OUT/aligned are "
               "not aligned again).",
    "search": "interrupted; no match was printed, rerun the same command to search again.",
    "serve": "interrupted; the server stopped, and the faces enrolled through it are kept in the gallery.",
    "gallery add": "interrupted; the faces added so far are in the gallery, rerun the same command to add the rest.",
    "gallery list": "interrupted; the gallery was only read, nothing changed.",
    "gallery remove": "interrupted; the removal was made in full or not at all, `facenet gallery list` shows which.",
    "gallery move": "interrupted; the move was made in full or not at all, `facenet gallery list --faces` shows "
                    "which.",
    "gallery export": "interrupted; the export folder is as it was before this run, rerun the same command to "
                      "export again.",
    "gallery copy": "interrupted; the faces copied so far are in the destination, rerun the same command to copy "
                    "the rest.",
}


def guarded(fn: Callable, interrupted: str | Callable[..., str] = "interrupted; nothing was kept.") -> Callable:
    """`fn` with the library's errors turned into `Error: <sentence>` and their exit code, and
    Ctrl-C into `interrupted` (or what `interrupted(**arguments)` says) with exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FacenetError as exc:
            fail(str(exc), exc.exit_code)
        except OSError as exc:
            if is_disk_full(exc):  # anything the engine did not turn into DiskFull itself
                fail(str(write_error(exc, exc.filename or "an output")), EXIT_FAILURE)
            raise
        except KeyboardInterrupt:
            fail(interrupted(**kwargs) if callable(interrupted) else interrupted, EXIT_INTERRUPTED)

    return wrapper


def command(fn: Callable | None = None, **settings) -> Callable:
    """Register a command whose library errors become `Error: ...` and their exit code.

    `settings` go to Typer's `app.command` (e.g. context_settings), as `@command(...)`.
    """
    if fn is None:
        return lambda f: command(f, **settings)
    name = fn.__name__.replace("_command", "").replace("_", "-")
    settings.setdefault("cls", FacenetCommand)
    return app.command(name, **settings)(guarded(fn, INTERRUPTED[name]))


def refuse_together(**given: bool) -> None:
    """Options that contradict each other: a usage error naming the first two given, e.g.
    `refuse_together(**{"--csv": as_csv, "--json": as_json})`."""
    from ..errors import UsageError

    named = [name for name, on in given.items() if on]
    if len(named) > 1:
        raise UsageError(f"{named[0]} and {named[1]} cannot be used together; choose one.")


def given_options(ctx: typer.Context, *names: str) -> list[str]:
    """The options among parameter `names` given on the command line (not left at their
    default), as their flags (`--detector`), in the order asked."""
    flags = {param.name: param.opts[0] for param in ctx.command.params if param.opts}
    given = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.append(flags.get(name, name))
    return given


def print_json(value: Any) -> None:
    """`--json` output: one strict JSON document on stdout (no NaN/Infinity), nothing else there."""
    from ..atomic import json_safe

    typer.echo(json.dumps(json_safe(value), indent=2, default=str, allow_nan=False))


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
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of tables.")]
# Every command that draws progress takes it; cli/_progress.py decides (no bar either when
# stderr is not a terminal).
QuietOption = Annotated[bool, typer.Option(
    "--quiet", help="Draw no progress bars (none are drawn either when stderr is not a terminal).")]
DeviceOption = Annotated[Device, typer.Option("--device", help="auto (a CUDA GPU when there is one), cpu or cuda.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Faces per forward pass.")]
FlipOption = Annotated[bool, typer.Option(
    "--flip/--no-flip", help="Average each face's embedding with its mirror image's (slower, often more accurate).")]
PrecisionOption = Annotated[Precision, typer.Option(
    "--precision", help="Network arithmetic: auto (the fastest of the three below that keeps LFW View 2 within 0.1 "
    "point of fp32 on this kind of CPU, from measured tables: int8 on AVX2, bf16 with AVX-512 BF16; fp32 on a GPU), "
    "fp32 (reference), bf16 (fast only on CPUs/GPUs with bf16 units) or int8 (CPU; 1.3x fp32's network speed on an "
    "AVX2 CPU, 2x with VNNI). represent records the one used in meta.json.")]
TTAOption = Annotated[int, typer.Option(
    "--tta", min=0, help="Also average N jittered copies of each face (small shifts, zooms, rotations); "
    "costs (1 + N)x the network time.")]
# Text, not a Path: a location passes to the gallery store as typed (a Path would fold the `//` of a
# URL a store backend may take); the SQLite store refuses a folder itself.
GalleryArg = Annotated[str, typer.Argument(help="The gallery: a file (SQLite), e.g. people.gallery, or a URL, e.g. "
                                           "postgresql://user@host/db?gallery=people.", metavar="GALLERY",
                                           show_default=False)]

# Detection options, the same on every command that finds faces in photos (align, represent
# --photos, compare, and the commands that take photos later).
# Each detector's words come from its own file (facenet_cli/detect/), so a new one is described too.
DetectorOption = Annotated[Detector, typer.Option("--detector", help=detector_help())]
UpsampleOption = Annotated[Upsample, typer.Option(
    "--upsample", help="Detector upsampling 0-4, or auto: 0 first, more only when no face is found (upsampling "
    "stops at a pixel budget, so huge photos are never blown up).")]
MinFaceOption = Annotated[Optional[int], typer.Option(
    "--min-face", metavar="PX", min=1, help="Find faces at least PX pixels wide in the photo; narrower boxes are "
    "dropped (mtcnn starts its search there, so a larger value is faster). Default: what the detector reaches.",
    show_default=False)]
FacesOption = Annotated[FacePolicy, typer.Option(
    "--faces", help="Several faces: largest, center (nearest the image centre), center-only (only a face covering "
    "the centre; for centred datasets such as LFW), all, skip-multi.")]
FallbackOption = Annotated[Fallback, typer.Option(
    "--fallback", help="No face found: none (record it), center (landmarks on the centre box, for centred datasets "
    "such as LFW), or whole (the whole image is the face box, for photos that are already tight face crops).")]
FallbackDirOption = Annotated[Optional[Path], typer.Option(
    "--fallback-dir", help="No face found: align the same relative path from this folder instead (OpenFace style).")]


# Where the batch work runs, the same on every command that works through many photos (align,
# represent, identify, cluster, gallery add). --workers has one meaning everywhere: processes
# that find and align faces (the network runs in this process, or on Ray's actors).
ExecutorOption = Annotated[Executor, typer.Option(
    "--executor", help="Where faces are found and aligned: local (processes on this machine) or ray (tasks on a "
    "Ray cluster; Ray comes with the ray extra of facenet-cli, or pip install 'ray>=2.40'). On a cluster of several "
    "machines the input and output folders (and the model files) must be on storage every node sees under the same "
    "path.")]
AddressOption = Annotated[Optional[str], typer.Option(
    "--address", help="With --executor ray: the cluster's address (host:port, as `ray start --head` prints it). "
    "Default: the cluster Ray finds (RAY_ADDRESS, or the latest `ray start` on this machine), else a local one "
    "started for this run.")]
WorkersOption = Annotated[Optional[int], typer.Option(
    "--workers", min=1, metavar="N", help="Processes that find and align faces, each loading the detector once "
    "(default: 1 for align and represent, one per CPU otherwise); with --executor ray: tasks running at once at most "
    "(default: twice the cluster's CPUs).")]
# How many results a command lists per face, best first (identify: candidates, search: gallery faces).
TopOption = Annotated[int, typer.Option("--top", min=1, metavar="N", help="Results listed per face, best first.")]


def pipeline_options(model: Any = None, **given: Any):
    """The command's pipeline.PipelineOptions: the face-pipeline options it was given (enum
    members become their values; None stays unset: the model's own, then the library's default)."""
    from ..pipeline.face_pipeline import PipelineOptions

    return PipelineOptions(model=None if model is None else str(model), **given)


def open_executor(executor: Any = None, address: str | None = None, workers: int | None = None):
    """The command's executor (executors.get_executor), to use as a context manager: local
    processes, or a Ray cluster (disconnected, and a cluster it started stopped, at the end)."""
    from ..errors import UsageError
    from ..executors import get_executor

    name = getattr(executor, "value", executor) or "local"
    if address:
        if name != "ray":
            raise UsageError("--address names a Ray cluster; add --executor ray to use it.")
        return get_executor(name, workers, address=address)
    return get_executor(name, workers)


def load_embedder(model: str, device: str = "auto", batch_size: int = 32, flip: bool = False,
                  precision: str = "auto", tta: int = 0, engine: str = "torch"):
    """Resolve --model through the catalogue (or a checkpoint) and load its network once."""
    return load_pipeline(model, device=device, batch_size=batch_size, flip=flip, precision=precision, tta=tta,
                         engine=engine, verify=False).embedder  # the embedder checks its own weights


def load_pipeline(model: str, verify: bool = True, **options):
    """The face pipeline of --model with the command's options (pipeline.PipelineOptions fields)."""
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions

    return FacePipeline.build(PipelineOptions(model=str(model), **options), verify=verify)
