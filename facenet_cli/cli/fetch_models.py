"""`facenet fetch-models`: show the catalogue with each model's weights status, fetch what is missing."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlparse

import typer
from rich import box
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from .. import hub
from ..catalogue import CATALOGUE, ModelRecord, get_record, list_models
from ..errors import FacenetError
from ._app import CacheDirOption, command, console, err_console

_STATE_TEXT = {
    "present": "[green]present[/green]",
    "missing": "[yellow]missing[/yellow]",
    "checksum-bad": "[red]checksum bad[/red]",
}


def _source_text(record: ModelRecord) -> str:
    weights = record.weights
    if weights is None:
        return "-"
    if weights.package:
        return f"pip: {weights.package}"
    if weights.url:
        return f"url: {urlparse(weights.url).netloc}"
    return f"file: {weights.path}"


def _size_text(record: ModelRecord, status: hub.WeightsStatus) -> str:
    size = record.weights.size if record.weights else None
    if size is None and status.location is not None and status.location.is_file():
        size = status.location.stat().st_size
    return f"{size / 1e6:.1f} MB" if size else "?"


def _table(records: list[ModelRecord], statuses: dict[str, hub.WeightsStatus], cache_dir) -> Table:
    table = Table(
        title="Model catalogue",
        caption=f"present = found and its SHA-256 checked; downloads go to {hub.weights_dir(cache_dir)}",
        box=box.SIMPLE_HEAD,
    )
    # Names and states stay whole (they are typed back on the command line); the rest may wrap.
    table.add_column("Model", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Size", no_wrap=True, justify="right")
    table.add_column("Architecture", no_wrap=True)
    table.add_column("Alignment")
    table.add_column("Source", overflow="fold")
    for record in records:
        status = statuses[record.name]
        table.add_row(record.name, _STATE_TEXT[status.state], _size_text(record, status), record.architecture,
                      f"{record.align.name} {record.align.size}px", _source_text(record))
    return table


def _fetch(record: ModelRecord, cache_dir: Optional[Path], mirror: Optional[Path]) -> Path:
    if not (record.weights and record.weights.url):
        # pip-shipped and local files are only located and verified; nothing to show progress for.
        return hub.weights_path(record, cache_dir, download=False)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(record.name, total=record.weights.size)
        return hub.weights_path(
            record, cache_dir, download=True, mirror=mirror,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


@command
def fetch_models_command(
    names: Annotated[Optional[list[str]], typer.Argument(
        help="Catalogue names to fetch (default: all).", show_default=False)] = None,
    from_dir: Annotated[Optional[Path], typer.Option(
        "--from", help="Copy weights from this folder (files under their own names) instead of "
        "downloading; for machines without internet.")] = None,
    cache_dir: CacheDirOption = None,
    list_only: Annotated[bool, typer.Option("--list", help="Only show the catalogue and each model's status.")] = False,
) -> None:
    """Fetch and verify model weights, after listing the catalogue with each model's status.

    Example: facenet fetch-models dlib-resnet.v1 --from /media/usb/facenet-weights
    """
    records = [get_record(name) for name in names] if names else [CATALOGUE[n] for n in list_models()]
    statuses = {record.name: hub.status(record, cache_dir) for record in records}
    console.print(_table(records, statuses, cache_dir))
    if list_only:
        return

    failed = []
    for record in records:
        if statuses[record.name].state == "present":
            continue
        try:
            path = _fetch(record, cache_dir, from_dir)
        except FacenetError as exc:
            # Keep going so one bad model does not block the others; the exit code still says it failed.
            err_console.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
            failed.append(record.name)
            continue
        console.print(f"{record.name}: fetched and verified, {path}", markup=False, highlight=False,
                      soft_wrap=True)
    if failed:
        raise typer.Exit(1)
    if all(statuses[r.name].state == "present" for r in records):
        console.print("Nothing to fetch; every listed model is present and verified.")
