"""Fixtures for running gallery tests against every store: `postgres_url` (a real PostgreSQL with
pgvector, started once per session with the `pgserver` wheel, or the server FACENET_TEST_POSTGRES
names) and `gallery_location` (a fresh gallery: a SQLite path, then a PostgreSQL URL).
tests/conftest.py imports them, so any test module may take `gallery_location`."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORES = ("sqlite", "postgres")


def _must_run() -> bool:
    """In CI, or beside the shared data (where `make test` installed the postgres extra), a missing
    PostgreSQL is a failure, not a skip."""
    return bool(os.environ.get("CI")) or (ROOT.parent / "shared").exists()


@pytest.fixture(scope="session")
def postgres_url():
    """A libpq URL of a PostgreSQL 16 server with pgvector that the tests may create schemas in."""
    given = os.environ.get("FACENET_TEST_POSTGRES")
    if given:
        yield given
        return
    try:
        with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in a container, a fallback is used
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        if _must_run():
            pytest.fail("pgserver is not installed; `make install` (the test and postgres extras) installs it")
        pytest.skip("pgserver is not installed (pip install -e .[postgres]) and FACENET_TEST_POSTGRES is not set")
    # A short folder: the server's unix socket lives there, and socket paths are limited to ~100 bytes.
    folder = tempfile.mkdtemp(prefix="fnpg", dir="/tmp")
    with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in a container, a fallback is used
        warnings.simplefilter("ignore")
        server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def with_gallery(url: str, name: str) -> str:
    """`url` naming the gallery `name` (its schema)."""
    return f"{url}{'&' if '?' in url else '?'}gallery={name}"


def new_postgres_gallery(url: str) -> str:
    return with_gallery(url, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=STORES)
def gallery_location(request, tmp_path) -> str:
    """A gallery that does not exist yet, in each store in turn."""
    if request.param == "sqlite":
        return str(tmp_path / "people.gallery")
    return new_postgres_gallery(request.getfixturevalue("postgres_url"))
