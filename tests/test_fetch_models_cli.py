"""`facenet fetch-models` end to end, against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests._weights_server import cache, PAYLOAD, serve  # noqa: F401 (cache: autouse fixture)
from facenet_cli.models import hub
from facenet_cli.models.catalogue import CATALOGUE, DEFAULT_MODEL
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


def statuses(result) -> dict[str, str]:
    return {row["name"]: row["status"] for row in json.loads(result.stdout)["files"]}


def test_list_shows_catalogue_and_fetches_nothing(server, cache):
    result = runner.invoke(app, ["fetch-models", "--list"])
    assert result.exit_code == 0, result.output
    assert DEFAULT_MODEL in result.stdout and "test-url-model" in result.stdout
    assert "dlib-resnet" in result.stdout and "dlib-chip" in result.stdout  # architecture, alignment
    # The table's status column: the URL model is not fetched yet, the pip-shipped files are here.
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("test-url-model", DEFAULT_MODEL, "dlib-landmarks-5")}
    assert rows == {"test-url-model": "missing", DEFAULT_MODEL: "present", "dlib-landmarks-5": "present"}
    assert server.requests == []
    assert not (cache / "weights").exists()


def test_json_lists_every_file_the_engine_loads_with_its_status(server, cache):
    result = runner.invoke(app, ["fetch-models", "--list", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # nothing but the JSON document on stdout
    by_name = {row["name"]: row for row in document["files"]}
    assert statuses(result) == {DEFAULT_MODEL: "present", "test-url-model": "missing", "dlib-landmarks-68": "present",
                                "dlib-landmarks-5": "present", "dlib-cnn-detector": "present",
                                "mtcnn-pnet": "present", "mtcnn-rnet": "present", "mtcnn-onet": "present"}
    assert {by_name[n]["kind"] for n in ("dlib-landmarks-68", "dlib-landmarks-5")} == {"landmarks"}
    assert by_name["dlib-cnn-detector"]["kind"] == "detector" and by_name[DEFAULT_MODEL]["kind"] == "embedding"
    assert by_name["dlib-landmarks-5"]["path"].endswith("shape_predictor_5_face_landmarks.dat")
    assert document["fetched"] == [] and document["failed"] == []
    assert server.requests == []


def test_json_says_what_was_fetched(server, cache):
    result = runner.invoke(app, ["fetch-models", "test-url-model", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["fetched"] == [{"name": "test-url-model", "path": str(cache / "weights" / "fake-weights.bin")}]
    assert statuses(result) == {"test-url-model": "present"}


def test_fetch_downloads_then_reports_present(server, cache):
    result = runner.invoke(app, ["fetch-models", "test-url-model"])
    assert result.exit_code == 0, result.output
    assert "test-url-model: fetched and verified" in flat(result.stdout)
    assert (cache / "weights" / "fake-weights.bin").read_bytes() == PAYLOAD

    again = runner.invoke(app, ["fetch-models", "test-url-model"])
    assert again.exit_code == 0, again.output
    assert "Nothing to fetch" in flat(again.stdout)
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
    result = runner.invoke(app, ["fetch-models", DEFAULT_MODEL, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["files"]
    assert row["status"] == "present" and row["source"] == "pip: face-recognition-models"
    assert hub.file_sha256(row["path"]) == CATALOGUE[DEFAULT_MODEL].weights.sha256


def test_unknown_name_exits_with_catalogue_list():
    result = runner.invoke(app, ["fetch-models", "no-such-model"])
    assert result.exit_code == 2  # a usage error
    assert "Unknown model 'no-such-model'" in result.stderr and DEFAULT_MODEL in result.stderr


def test_help_has_an_example():
    result = runner.invoke(app, ["fetch-models", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout and "--from" in result.stdout and "--cache-dir" in result.stdout
