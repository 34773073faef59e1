"""Fixtures for running gallery tests against every store: `postgres_url` (a real PostgreSQL with
pgvector, started once per session with the `pgserver` wheel, or the server FACENET_TEST_POSTGRES
names) and `gallery_location` (a fresh gallery: a SQLite path, then a PostgreSQL URL);
`galleries` (more new galleries, copies of one, in the same store) and `module_galleries` (the
same for module-scoped fixtures) follow the same parameter, `store_kind`. tests/conftest.py
imports them, so any test module may take them."""
from __future__ import annotations

import os
import shutil
import sqlite3
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


def as_role(url: str, role: str, password: str | None = None) -> str:
    """`url` logging in as `role` (with `password`)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{role}{':' + password if password else ''}@{host}", parts.path,
                       parts.query, parts.fragment))


def run_sql(url: str, *statements: str) -> None:
    """Statements run on the database of `url` (its `gallery=` left out), as its administrator would."""
    import psycopg

    base = url.split("gallery=")[0].rstrip("?&")
    with psycopg.connect(base, autocommit=True) as db:
        for statement in statements:
            db.execute(statement)


def read_only_url(postgres_url: str, gallery_url: str) -> str:
    """The URL of a new role that may only read the gallery at `gallery_url` (SELECT, nothing more)."""
    role, schema = f"reader_{uuid.uuid4().hex[:8]}", gallery_url.rsplit("gallery=", 1)[1]
    run_sql(postgres_url, f"CREATE ROLE {role} LOGIN", f"GRANT USAGE ON SCHEMA {schema} TO {role}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    return as_role(gallery_url, role)


@pytest.fixture(scope="module", params=STORES)
def store_kind(request) -> str:
    """The store a test runs on, each in turn: every fixture below follows this one parameter, so a
    test that takes several of them runs twice (sqlite, postgres), not four times. Module scope:
    a module's galleries made once (its `enrolled` fixture) are made once per store."""
    return request.param


class Galleries:
    """New galleries in one store: `new(name)` a location nothing is at yet (a file in `folder`, or
    a fresh schema of the one test server), `copy_of(location)` a new gallery holding the same
    faces, model and thumbnails (a file copy, or `gallery copy`: the embeddings' very bytes, so
    nothing is embedded again), `foreign()` another program's database, `holds_nothing(location)`
    whether no gallery (with faces or a model) is there, `people(location)` who is in one."""

    def __init__(self, kind: str, folder: Path, postgres_url: str | None):
        self.kind, self.folder, self.postgres_url = kind, folder, postgres_url

    def __repr__(self) -> str:
        return f"Galleries({self.kind!r})"

    @property
    def is_sqlite(self) -> bool:
        return self.kind == "sqlite"

    def new(self, name: str = "people") -> str:
        if self.is_sqlite:
            return str(self.folder / f"{name}.gallery")
        return new_postgres_gallery(self.postgres_url)

    def copy_of(self, location, name: str = "copy") -> str:
        copy = self.new(name)
        if self.is_sqlite and "://" not in str(location):
            shutil.copy(location, copy)
        else:
            from facenet_cli.recognition.gallery_admin import copy_gallery

            copy_gallery(str(location), copy)
        return copy

    def foreign(self, name: str = "foreign") -> str:
        """A location holding another program's table (`songs`) and no gallery: a SQLite database
        file, or a schema of the test server."""
        location = self.new(name)
        if self.is_sqlite:
            db = sqlite3.connect(location)
            db.execute("CREATE TABLE songs (title TEXT)")
            db.commit()
            db.close()
        else:
            schema = location.rsplit("gallery=", 1)[1]
            run_sql(self.postgres_url, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.songs (title text)")
        return location

    @staticmethod
    def holds_nothing(location) -> bool:
        """No gallery is at `location`, or (PostgreSQL) an empty one bound to no model: a PostgreSQL
        gallery's schema is made when it is first opened for writing, and its model is bound with its
        first faces, so a `gallery add` that enrolled nothing leaves that, where SQLite leaves no file
        (test_gallery_postgres.py::test_a_gallery_add_that_enrols_nothing_leaves_it_unbound)."""
        from facenet_cli.errors import UsageError
        from facenet_cli.store.registry import open_store

        if "://" not in str(location):
            return not Path(location).exists()
        try:
            with open_store(location) as gallery:
                return gallery.model is None and len(gallery) == 0
        except UsageError:
            return True

    @staticmethod
    def people(location) -> dict[str, int]:
        from facenet_cli.store.registry import open_store

        with open_store(location) as gallery:
            return dict(gallery.people())


def _galleries(request, kind: str, folder: Path) -> Galleries:
    return Galleries(kind, folder, None if kind == "sqlite" else request.getfixturevalue("postgres_url"))


@pytest.fixture
def galleries(request, store_kind, tmp_path) -> Galleries:
    """New galleries in the store under test, for one test."""
    return _galleries(request, store_kind, tmp_path)


@pytest.fixture(scope="module")
def module_galleries(request, store_kind, tmp_path_factory) -> Galleries:
    """New galleries in the store under test, for a module's shared fixtures."""
    return _galleries(request, store_kind, tmp_path_factory.mktemp(f"galleries-{store_kind}"))


@pytest.fixture
def gallery_location(galleries) -> str:
    """A gallery that does not exist yet, in each store in turn."""
    return galleries.new("people")
