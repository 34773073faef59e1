"""`facenet fetch-models`: list every catalogued file (models, landmark predictors, detectors) with
its status, and fetch or verify what is not present."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import CacheDirOption, JsonOption, QuietOption, command, console, err_console, print_json, refuse_together

# (text, style): the consoles print with markup off (names and paths are user text).
_STATE_TEXT = {
    "present": ("present", "green"),
    "missing": ("missing", "yellow"),
    "checksum-bad": ("checksum bad", "red"),
}


def _source_text(entry) -> str:
    from urllib.parse import urlparse

    weights = entry.weights
    if weights is None:
        return "-"
    if weights.package:
        return f"pip: {weights.package}"
    if weights.url:
        return f"url: {urlparse(weights.url).netloc}"
    return f"file: {weights.path}"


def _size(entry, status) -> int | None:
    size = entry.weights.size if entry.weights else None
    if size is None and status.location is not None and status.location.is_file():
        size = status.location.stat().st_size
    return size


def _row(entry, status) -> dict:
    """One catalogue entry as --json prints it."""
    from ..models.catalogue import ModelRecord, kind_of

    row = {"name": entry.name, "kind": kind_of(entry), "status": status.state,
           "path": str(status.location) if status.location else None, "size": _size(entry, status),
           "source": _source_text(entry), "sha256": entry.weights.sha256 if entry.weights else None}
    if isinstance(entry, ModelRecord):
        row.update(architecture=entry.architecture, alignment=f"{entry.align.name} {entry.align.size}px")
    return row


def _table(rows: list[dict], cache_dir):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from ..models import hub

    table = Table(
        title="Model catalogue",
        caption=f"Each file's SHA-256 is checked before it is used; downloads go to {hub.weights_dir(cache_dir)}",
        box=box.SIMPLE_HEAD,
    )
    # Names and states stay whole (they are typed back on the command line); the rest may wrap.
    table.add_column("Name", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Size", no_wrap=True, justify="right")
    table.add_column("What")
    table.add_column("Source", overflow="fold")
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "?"
        what = f"{row['kind']}: {row['architecture']}, {row['alignment']}" if "architecture" in row else row["kind"]
        table.add_row(row["name"], Text(*_STATE_TEXT[row["status"]]), size, what, row["source"])
    return table


def _fetch(entry, cache_dir: Optional[Path], mirror: Optional[Path], show_progress: bool) -> Path:
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from ..models import hub
    from ._progress import progress_shown

    if not (entry.weights and entry.weights.url):
        # pip-shipped and local files are only located and verified; nothing to show progress for.
        return hub.weights_path(entry, cache_dir, download=False)
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True,
                  disable=not (show_progress and progress_shown())) as bar:
        task = bar.add_task(entry.name, total=entry.weights.size)
        return hub.weights_path(
            entry, cache_dir, download=True, mirror=mirror,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


@command
def fetch_models_command(
    names: Annotated[Optional[list[str]], typer.Argument(
        help="Catalogue names to fetch (default: all; see the list).", show_default=False)] = None,
    from_dir: Annotated[Optional[Path], typer.Option(
        "--from", help="Copy weights from this folder (files under their own names) instead of "
        "downloading; for machines without internet.", show_default=False)] = None,
    cache_dir: CacheDirOption = None,
    list_only: Annotated[bool, typer.Option("--list", help="Only show the catalogue and each file's status.")] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """List every model file with its status, then fetch and verify what is missing.

    The catalogue holds the embedding models and dlib's landmark predictors and CNN detector; each
    file's status is present (found, SHA-256 checked), missing, or checksum bad. Exits 1 when a
    file could not be fetched or is damaged.

    Example: facenet fetch-models dlib-resnet.v1 --from /media/usb/facenet-weights
    """
    from ..models import hub
    from ..models.catalogue import all_files, get_entry
    from ..errors import FacenetError

    refuse_together(**{"--list": list_only, "--from": from_dir is not None})  # --list fetches nothing

    entries = [get_entry(name) for name in names] if names else all_files()
    statuses = {entry.name: hub.status(entry, cache_dir) for entry in entries}
    rows = [_row(entry, statuses[entry.name]) for entry in entries]
    if not json_output:
        console.print(_table(rows, cache_dir))

    fetched, failed = [], []
    if not list_only:
        for entry in entries:
            if statuses[entry.name].state == "present":
                continue
            try:
                path = _fetch(entry, cache_dir, from_dir, show_progress=not (json_output or quiet))
            except FacenetError as exc:
                # Keep going so one bad file does not block the others; the exit code still says it failed.
                failed.append({"name": entry.name, "error": str(exc)})
                err_console.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
                continue
            fetched.append({"name": entry.name, "path": str(path)})
            if not json_output:
                console.print(f"{entry.name}: fetched and verified, {path}", markup=False, highlight=False,
                              soft_wrap=True)
    if json_output:
        # Statuses after fetching, so the document says what is usable now.
        after = [_row(entry, hub.status(entry, cache_dir)) for entry in entries] if fetched else rows
        print_json({"cache": str(hub.weights_dir(cache_dir)), "files": after, "fetched": fetched, "failed": failed})
    elif not list_only and not failed and not fetched:
        console.print("Nothing to fetch; every listed file is present and verified.")
    if failed:
        raise typer.Exit(1)
