"""The PostgreSQL gallery store: a gallery in a schema of a PostgreSQL database with pgvector, for
`postgresql://` (and `postgres://`) locations, e.g.
`postgresql://facenet@db.example/faces?gallery=people` (store/postgres_schema.py: the location,
the tables, the migrations).

The same contract as the SQLite file (store/protocol.py), and what a database adds: several
programs on several machines read and write one gallery at once; every write is one transaction
that first locks the gallery's `generation` row, so writers take turns, each bumps the generation
and replaces the revision (what `generation()` reads: one indexed row), and a writer killed
mid-batch leaves nothing of its batch. Nearest faces are shortlisted in the database (HNSW on
inner product, pgvector) and ranked by exact distances here; the store searches in place
(protocol.SearchesInPlace), so search and identify read only the shortlisted people's faces.
A role with SELECT only reads (identify, search, list, export); its writes are refused in one
sentence. The model is bound with the first faces, in their transaction, so a `gallery add` that
enrols nothing leaves the gallery unbound, as a new SQLite gallery leaves no file. Thumbnails
are rows of `thumbs`.

Passwords: the location a store shows (`location`, str(), every message) has its password
masked (registry.shown_location); libpq reads PGPASSWORD, ~/.pgpass and service files itself.
Needs the `postgres` extra (psycopg 3, pgvector); importing this module does not.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..errors import DataError, FacenetError, UsageError, WriteError
from .migrations import FORMAT
from .names import name_keys, normalise_name, valid_face_id
from .postgres_schema import (LATEST, SEARCH_INDEX, applied_version, create_search_index, face_count_sql,
                              fix_dimension, fold_face_count, has_search_index, migrate, refuse_newer,
                              split_location, tables)
from .registry import URL_USER_PASSWORD, register_store, shown_location
from .sqlite_file import generation_in, model_from_info
from .types import (DEFAULT_TIMEOUT, Enrolment, ExactIndex, Face, GalleryModel, GalleryState, IndexUse, enrolment_of,
                    model_fingerprint, refuse_other_model)

if TYPE_CHECKING:  # annotations only
    from ..models.catalogue import ModelRecord

# pgvector's HNSW search returns at most hnsw.ef_search rows (1000 at most): deeper asks scan exactly.
MAX_EF_SEARCH = 1000
# The search depth even for one answer: at a million faces (benchmarks/gallery_postgres.py) 100 found
# the exact first face for 97.4% of new photos, 200 for 99.7%, for ~1.7 ms more a query.
MIN_EF_SEARCH = 200
# A batch this big into an empty gallery (`gallery copy`, a big first `gallery add`) is loaded
# without the HNSW index, which keep_index_current then builds in one go: several times faster
# than growing the graph face by face (benchmarks/gallery_postgres.py: build vs REINDEX).
BULK_FACES = 1000
_FACE_COLUMNS = ("f.id, p.name, f.source, f.image_sha256, f.box_left, f.box_top, f.box_right, f.box_bottom, "
                 "f.added")


def _face(r) -> Face:
    return Face(r[0], r[1], r[2], r[3], None if r[4] is None else (r[4], r[5], r[6], r[7]), r[8])


class PostgresGallery:
    """One gallery (a schema) in a PostgreSQL database; a GalleryStore. One connection, used by
    one thread at a time (the store's lock), so a server's threads may share it."""

    def __init__(self, location: str, create: bool = False, timeout: float = DEFAULT_TIMEOUT, *,
                 salvage: bool = False, read_only: bool | None = None):
        self._shown = shown_location(location)
        self._secrets = _passwords(location)
        conninfo, self.schema = split_location(location)
        self._t = tables(self.schema)
        self._lock = threading.RLock()
        self._pending_bind: dict[str, str] | None = None  # model rows bound, written with the first faces
        self._ef_search: int | None = None  # the session's hnsw.ef_search, once set
        self.read_only = bool(read_only)
        try:
            import psycopg
            from pgvector.psycopg import register_vector
        except ImportError:
            raise UsageError(f"{self._shown} is a PostgreSQL gallery, and the PostgreSQL support is not installed; "
                             "install it with `pip install 'facenet-cli[postgres]'`.") from None
        self._psycopg, self._register_vector = psycopg, register_vector
        self._conninfo, self._timeout = conninfo, timeout
        self.db = self._connect()
        try:
            with self._sql("open"):
                self._open(create, salvage)
                register_vector(self.db)
        except BaseException:
            self.db.close()
            raise

    def _connect(self):
        try:
            db = self._psycopg.connect(self._conninfo, autocommit=True)
            # A writer waits this long for another's transaction, then says the gallery is busy.
            db.execute(f"SET lock_timeout = {int(max(self._timeout, 0.001) * 1000)}")
        except self._psycopg.Error as exc:
            raise FacenetError(f"Cannot connect to the gallery {self._shown}: {self._reason(exc)}.") from None
        self._ef_search = None
        return db

    def _reconnect(self) -> None:
        """After the server dropped this store's connection (a restart, a failover), connect again
        for the next call, so a long-running reader (the server) carries on once the database is back."""
        try:
            db = self._connect()
            self._register_vector(db)
        except (FacenetError, self._psycopg.Error):
            return  # still down: the next call tries again
        self.db.close()
        self.db = db

    def _open(self, create: bool, salvage: bool) -> None:
        version = applied_version(self.db, self.schema)
        if version == 0:
            if not create:
                raise UsageError(f"No gallery at {self._shown}; create one with "
                                 f"`facenet gallery add {self._shown} KNOWN/`.")
            if self.read_only:
                raise WriteError(f"Cannot create the gallery {self._shown} read-only; open it for writing.")
            version = migrate(self.db, self.schema, self._shown)
        info = self._info()
        if info.get("format") != FORMAT:
            raise DataError(f"The schema {self.schema} of {self._shown} is not a facenet gallery; name another "
                            "with ?gallery=NAME.")
        refuse_newer(version, self._shown)
        if version is None and not salvage:
            self.check_integrity()
        if not self.read_only:
            self.read_only = not self.db.execute("SELECT has_table_privilege(%s, 'INSERT')",
                                                 (self._t["faces"],)).fetchone()[0]
        if version is not None and version < LATEST:
            if self.read_only:
                raise DataError(f"The gallery {self._shown} was written by an earlier facenet and must be upgraded "
                                "once by a role that can write it; open it once for writing.")
            migrate(self.db, self.schema, self._shown)
        # The kept face count (postgres_schema._v2_face_count); a role granted SELECT on the older
        # tables one by one, not on it (or a damaged gallery opened to salvage), counts the faces instead.
        readable = self.db.execute("SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_catalog.pg_class c JOIN "
                                   "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
                                   "c.relname = 'face_count_deltas'", (self.schema,)).fetchone()
        self._face_count = face_count_sql(self.schema) if readable and readable[0] and version is not None \
            else f"(SELECT count(*) FROM {self._t['faces']})"

    # -- lifecycle

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "PostgresGallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def location(self) -> str:
        return self._shown

    def __str__(self) -> str:
        return self._shown

    def __repr__(self) -> str:
        return f"PostgresGallery({self._shown!r})"

    @contextmanager
    def _sql(self, doing: str):
        """Hold the store's lock; end a failed transaction; turn the database's errors into one sentence."""
        errors = self._psycopg.errors
        with self._lock:
            try:
                yield
            except self._psycopg.Error as exc:
                self._rollback()
                verb, done = _DOING[doing]
                if isinstance(exc, errors.InsufficientPrivilege):
                    raise WriteError(f"This role may not {verb} the gallery {self._shown}; use a role that may "
                                     "(reading needs SELECT on its tables, changing it INSERT, UPDATE and "
                                     "DELETE).") from None
                if isinstance(exc, (errors.LockNotAvailable, errors.QueryCanceled)):
                    raise FacenetError(f"The gallery {self._shown} is locked by another program that is writing it; "
                                       "wait for it to finish, then try again.") from None
                if isinstance(exc, self._psycopg.OperationalError):
                    if self.db.closed or self.db.broken:
                        self._reconnect()
                    raise FacenetError(f"The connection to the gallery {self._shown} failed: {self._reason(exc)}.") \
                        from None
                raise DataError(f"The gallery {self._shown} could not be {done}: {self._reason(exc)}.") from None
            except BaseException:
                self._rollback()
                raise

    def _reason(self, exc: BaseException) -> str:
        """The first line of a database error, the location's password masked wherever libpq
        quotes it (a malformed URL is quoted whole)."""
        text = _first_line(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _rollback(self) -> None:
        try:
            if self.db.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
                self.db.execute("ROLLBACK")
        except self._psycopg.Error:
            pass

    def _info(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.db.execute(f"SELECT key, value FROM {self._t['info']}")}

    def check_integrity(self) -> None:
        with self._sql("read"):
            version = self._info().get("version", "0")
        if not (version.isascii() and version.isdigit() and len(version) < 10):
            raise DataError(f"The version record of the gallery {self._shown} is damaged ({version[:40]!r}), so "
                            "facenet cannot tell whether it reads it right; list where its faces came from with "
                            f"`facenet gallery list {self._shown} --with-faces` and add them to a new gallery.")

    # -- the model

    @property
    def model(self) -> GalleryModel | None:
        with self._sql("read"):  # one statement, one snapshot: another program may bind and add meanwhile
            rows = self.db.execute(f"SELECT key, value, EXISTS (SELECT 1 FROM {self._t['faces']}) "
                                   f"FROM {self._t['info']}").fetchall()
        info = {str(key): str(value) for key, value, _ in rows}
        has_faces = "model" not in info and any(row[2] for row in rows)
        if "model" not in info and self._pending_bind is not None:
            info = {**info, **self._pending_bind}
        return model_from_info(info, self._shown, has_faces)

    def bind(self, record: "ModelRecord", ref: str, flip: bool) -> GalleryModel:
        """Make `record` the gallery's model (written with the first faces), or check it is."""
        fingerprint = model_fingerprint(record)
        self._refuse_if_read_only()
        if self.model is None:
            self._pending_bind = {"model": json.dumps(record.to_dict(), sort_keys=True), "model_ref": ref,
                                  "fingerprint": fingerprint, "flip": "1" if flip else "0"}
        model = self.model
        self.check_model(record.name, record.align.to_dict(), record.embedding_dim, fingerprint, flip)
        return model

    def check_model(self, name: str, align: dict, dim: int, fingerprint: str | None, flip: bool | None) -> None:
        refuse_other_model(self.model, self._shown, name, align, dim, fingerprint, flip)

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise WriteError(f"The gallery {self._shown} is read-only for this role (it can be listed, searched and "
                             "exported, not changed); use a role that may write it.")

    # -- reading

    def people(self) -> list[tuple[str, int]]:
        with self._sql("read"):
            return [(n, int(c)) for n, c in self.db.execute(
                f"SELECT p.name, count(f.id) FROM {self._t['people']} p LEFT JOIN {self._t['faces']} f "
                'ON f.person_id = p.id GROUP BY p.id, p.name ORDER BY p.name COLLATE "C"')]

    def faces(self, person: str | None = None) -> list[Face]:
        query = f"SELECT {_FACE_COLUMNS} FROM {self._t['faces']} f JOIN {self._t['people']} p ON p.id = f.person_id"
        args: tuple = ()
        if person is not None:
            query += " WHERE p.name = ANY(%s)"
            args = (name_keys(person),)
        with self._sql("read"):
            return [_face(r) for r in self.db.execute(query + " ORDER BY f.id", args)]

    def faces_by_id(self, face_ids: Iterable[int]) -> dict[int, Face]:
        wanted = sorted({int(i) for i in face_ids if valid_face_id(int(i))})
        if not wanted:
            return {}
        with self._sql("read"):
            rows = self.db.execute(f"SELECT {_FACE_COLUMNS} FROM {self._t['faces']} f JOIN {self._t['people']} p "
                                   "ON p.id = f.person_id WHERE f.id = ANY(%s)", (wanted,)).fetchall()
        return {r[0]: _face(r) for r in rows}

    def __len__(self) -> int:
        with self._sql("read"):
            return int(self.db.execute(f"SELECT {self._face_count}").fetchone()[0])

    def has_image(self, image_sha256: str) -> bool:
        with self._sql("read"):
            return self.db.execute(f"SELECT 1 FROM {self._t['faces']} WHERE image_sha256 = %s",
                                   (image_sha256,)).fetchone() is not None

    def enrolment(self) -> Enrolment:
        model = self.model
        with self._sql("read"):
            rows = self._enrolment_rows()
        return enrolment_of(rows, model, self._shown)

    def _enrolment_rows(self) -> list:
        # COLLATE "C": code-point order, as Python sorts names and SQLite orders them, so both stores
        # give the same faces in the same order (and exact ties break alike).
        cursor = self.db.cursor(binary=True)
        cursor.execute(f"SELECT f.id, p.name, f.embedding FROM {self._t['faces']} f JOIN {self._t['people']} p "
                       'ON p.id = f.person_id ORDER BY p.name COLLATE "C", f.id')
        return [(r[0], r[1], r[2].to_numpy()) for r in cursor]

    def state(self) -> GalleryState:
        with self._sql("read"):
            return self._state_in(self._info())

    def _state_in(self, info: dict[str, str]) -> GalleryState:
        # One statement, one snapshot: the count and the last id agree.
        count, max_id = self.db.execute(f"SELECT {self._face_count}, "
                                        f"(SELECT coalesce(max(id), 0) FROM {self._t['faces']})").fetchone()
        dim = 0
        if "model" in info:
            try:
                dim = int(json.loads(info["model"])["embedding_dim"])
            except (KeyError, ValueError, TypeError):
                dim = 0
        return GalleryState(info.get("gallery_id", ""), generation_in(info), int(count), int(max_id),
                            info.get("fingerprint", ""), dim, info.get("revision", ""))

    def snapshot(self) -> tuple[GalleryState, Enrolment | None]:
        """The state and every face, read in one repeatable-read transaction (so they agree)."""
        model = self.model
        with self._sql("read"):
            self.db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            state = self._state_in(self._info())
            rows = self._enrolment_rows() if state.faces else []
            self.db.execute("COMMIT")
        return state, (enrolment_of(rows, model, self._shown) if rows else None)

    def generation(self) -> str:
        """The revision row: replaced by every write transaction, whoever commits it."""
        with self._sql("read"):
            row = self.db.execute(f"SELECT value FROM {self._t['info']} WHERE key = 'revision'").fetchone()
        return row[0] if row else ""

    # -- nearest neighbours

    def neighbour_index(self, state: GalleryState, enrolment: Enrolment) -> IndexUse:
        """The database's own HNSW index (always current: PostgreSQL maintains it with each write)."""
        return IndexUse(DatabaseIndex(self, enrolment), "database")

    def nearest(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each vector's k nearest faces: shortlisted by the HNSW index (inner product), then ordered
        by exact squared L2 distances computed here from the stored embeddings."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        if k > MAX_EF_SEARCH:  # deeper than the index answers: an exact scan
            state, enrolment = self.snapshot()
            return ExactIndex(enrolment).search(queries, k) if enrolment is not None else (ids, distances)
        with self._sql("read"):
            cursor = self.db.cursor(binary=True)
            depth = max(MIN_EF_SEARCH, k)
            if depth != self._ef_search:  # a session setting, so a query is one round trip
                self.db.execute(f"SET hnsw.ef_search = {int(depth)}")
                self._ef_search = depth
            for row, query in enumerate(queries):
                cursor.execute(f"SELECT id, embedding FROM {self._t['faces']} ORDER BY embedding <#> %b LIMIT %b",
                               (query, k))
                found = cursor.fetchall()
                if not found:
                    continue
                vectors_found = np.stack([r[1].to_numpy() for r in found])
                d = np.maximum(np.sum(query ** 2) + np.sum(vectors_found ** 2, 1) - 2 * vectors_found @ query, 0)
                order = np.argsort(d, kind="stable")
                ids[row, :len(found)] = np.array([r[0] for r in found])[order]
                distances[row, :len(found)] = d[order]
        return ids, distances

    def nearest_exact(self, vectors: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per vector, (face ids, embeddings) of its k nearest faces by an exact scan in the database
        (SearchesInPlace): ordered by L2 distance, which the inner-product HNSW index cannot serve,
        so every face is compared there and only k rows come back."""
        found = []
        with self._sql("read"):
            cursor = self.db.cursor(binary=True)
            for query in np.atleast_2d(np.asarray(vectors, dtype=np.float32)):
                cursor.execute(f"SELECT id, embedding FROM {self._t['faces']} ORDER BY embedding <-> %b LIMIT %b",
                               (query, int(k)))
                rows = cursor.fetchall()
                found.append((np.array([r[0] for r in rows], dtype=np.int64),
                              np.stack([r[1].to_numpy() for r in rows]) if rows else np.zeros((0, len(query)))))
        return found

    def people_enrolment(self, face_ids) -> Enrolment | None:
        """Every face of the people owning these faces, ordered as enrolment() orders the gallery's
        (SearchesInPlace); None when none of the ids is in the gallery."""
        wanted = sorted({int(i) for i in face_ids if valid_face_id(int(i))})
        if not wanted:
            return None
        model = self.model
        with self._sql("read"):
            cursor = self.db.cursor(binary=True)
            cursor.execute(f"SELECT f.id, p.name, f.embedding FROM {self._t['faces']} f JOIN {self._t['people']} p "
                           f"ON p.id = f.person_id WHERE f.person_id IN (SELECT person_id FROM {self._t['faces']} "
                           'WHERE id = ANY(%s)) ORDER BY p.name COLLATE "C", f.id', (wanted,))
            rows = [(r[0], r[1], r[2].to_numpy()) for r in cursor]
        return enrolment_of(rows, model, self._shown) if rows else None

    # -- writing

    def add_face(self, person: str, embedding: np.ndarray, source: str, image_sha256: str,
                 box: tuple[int, int, int, int] | None = None) -> int | None:
        return self.add_faces([(person, embedding, source, image_sha256, box)])[0]

    def add_faces(self, rows: Iterable[tuple]) -> list[int | None]:
        """Enrol faces in one transaction: all land or none; None for an image already in."""
        rows = list(rows)
        with self._lock:
            model = self.model
            if model is None:
                raise UsageError("Bind the gallery to a model (bind) before adding faces.")
            if not rows:
                return []
            prepared = []
            for person, embedding, source, sha, box in rows:  # every face checked before any lands
                vector = np.asarray(embedding, dtype="<f4").reshape(-1)
                if vector.shape[0] != model.dim or not np.isfinite(vector).all():
                    raise DataError(f"The embedding of {source} is not a finite {model.dim}-d vector.")
                left, top, right, bottom = box if box is not None else (None,) * 4
                prepared.append((normalise_name(person), vector, source, sha, left, top, right, bottom))
            with self._transaction() as info:
                self._write_pending_model(info)
                if len(prepared) >= BULK_FACES and not self.db.execute(
                        f"SELECT EXISTS (SELECT 1 FROM {self._t['faces']})").fetchone()[0]:
                    self.db.execute(f'DROP INDEX IF EXISTS "{self.schema}".{SEARCH_INDEX}')
                people = self._people_ids({p[0] for p in prepared})
                # One statement for the batch (one firing of the face-count trigger, not one a face):
                # the rows in their order, so the first copy of an image lands and a later one does not.
                columns = [[people[p[0]] for p in prepared], [p[1] for p in prepared]] + \
                    [[p[k] for p in prepared] for k in (2, 3)] + \
                    [[None if p[k] is None else int(p[k]) for p in prepared] for k in (4, 5, 6, 7)]
                landed = dict(self.db.execute(
                    f"INSERT INTO {self._t['faces']}(person_id, embedding, source, image_sha256, box_left, box_top, "
                    "box_right, box_bottom, added) SELECT person_id, embedding, source, sha, l, t, r, b, %s "
                    "FROM unnest(%s::bigint[], %b::vector[], %s::text[], %s::text[], %s::integer[], %s::integer[], "
                    "%s::integer[], %s::integer[]) WITH ORDINALITY AS u(person_id, embedding, source, sha, l, t, r, b, "
                    "ord) ORDER BY ord ON CONFLICT (image_sha256) DO NOTHING RETURNING image_sha256, id",
                    (time.time(), *columns)).fetchall())
                ids: list[int | None] = [landed.pop(p[3], None) for p in prepared]
            self._pending_bind = None
        return ids

    def _write_pending_model(self, info: dict[str, str]) -> None:
        """Inside the first faces' transaction: write the model rows bound (and type and index the
        embedding column); when another program bound the gallery meanwhile, check it is this model."""
        if self._pending_bind is None:
            return
        bound = self._pending_bind
        if "model" in info:
            record = json.loads(bound["model"])
            refuse_other_model(model_from_info(info, self._shown, True), self._shown, record["name"], record["align"],
                               int(record["embedding_dim"]), bound["fingerprint"], bound["flip"] == "1")
            return
        self.db.cursor().executemany(f"INSERT INTO {self._t['info']}(key, value) VALUES (%s, %s) "
                                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", list(bound.items()))
        fix_dimension(self.db, self.schema, int(json.loads(bound["model"])["embedding_dim"]))

    def _people_ids(self, names: set[str]) -> dict[str, int]:
        """Each name's person id, made for new names (writers take turns: no race)."""
        people = self._t["people"]
        found = dict(self.db.execute(f"SELECT name, id FROM {people} WHERE name = ANY(%s)", (sorted(names),)))
        for name in sorted(names - set(found)):
            found[name] = self.db.execute(f"INSERT INTO {people}(name, added) VALUES (%s, %s) RETURNING id",
                                          (name, time.time())).fetchone()[0]
        return found

    @contextmanager
    def _transaction(self):
        """One write transaction: takes the gallery's write turn (its generation row), yields its
        info rows, then drops people left without faces and bumps generation and revision."""
        self._refuse_if_read_only()
        info_table = self._t["info"]
        with self._sql("write"):
            self.db.execute("BEGIN")
            self.db.execute(f"SELECT value FROM {info_table} WHERE key = 'generation' FOR UPDATE")
            info = self._info()
            yield info
            self.db.execute(f"DELETE FROM {self._t['people']} p WHERE NOT EXISTS "
                            f"(SELECT 1 FROM {self._t['faces']} f WHERE f.person_id = p.id)")
            self.db.cursor().executemany(
                f"UPDATE {info_table} SET value = %s WHERE key = %s",
                [(str(max(generation_in(info), 0) + 1), "generation"), (uuid.uuid4().hex, "revision")])
            fold_face_count(self.db, self.schema)
            self.db.execute("COMMIT")

    def keep_index_current(self) -> str:
        """PostgreSQL keeps its HNSW index current with every write; after a bulk load into an
        empty gallery (or one that was stopped before this), build it: "built", else "none"."""
        if self.read_only:
            return "none"
        with self._sql("write"):
            if has_search_index(self.db, self.schema) or "model" not in self._info():
                return "none"
            self.db.execute("BEGIN")
            # pgvector builds fast only while the whole graph fits in maintenance_work_mem (1.7 KB a face at
            # m=32, measured); each face past it is inserted on disk, ~100 times slower. Raise it, never lower.
            faces = self.db.execute(f"SELECT {self._face_count}").fetchone()[0]
            need_kb = 65536 + 2 * int(faces)
            if need_kb > int(self.db.execute("SELECT setting FROM pg_settings "
                                              "WHERE name = 'maintenance_work_mem'").fetchone()[0]):
                self.db.execute(f"SET LOCAL maintenance_work_mem = '{need_kb}kB'")
            create_search_index(self.db, self.schema)
            self.db.execute("COMMIT")
        return "built"

    def remove_person(self, name: str) -> int:
        with self._transaction():
            gone = [r[0] for r in self.db.execute(f"DELETE FROM {self._t['faces']} WHERE person_id = %s "
                                                  "RETURNING image_sha256", (self._existing_person(name),))]
            self._drop_thumbs(gone)
        return len(gone)

    def remove_face(self, face_id: int) -> str:
        with self._transaction():
            person = self._face_person(face_id)
            gone = [r[0] for r in self.db.execute(f"DELETE FROM {self._t['faces']} WHERE id = %s "
                                                  "RETURNING image_sha256", (int(face_id),))]
            self._drop_thumbs(gone)
        return person

    def _drop_thumbs(self, shas: list[str]) -> None:
        self.db.execute(f"DELETE FROM {self._t['thumbs']} WHERE image_sha256 = ANY(%s)", (shas,))

    def move_face(self, face_id: int, new_name: str) -> tuple[str, str]:
        target = normalise_name(new_name)
        with self._transaction():
            old = self._face_person(face_id)
            person_id = self._people_ids({target})[target]
            self.db.execute(f"UPDATE {self._t['faces']} SET person_id = %s WHERE id = %s", (person_id, int(face_id)))
        return old, target

    def rename_person(self, name: str, new_name: str) -> int:
        target = normalise_name(new_name)
        with self._transaction():
            old_id = self._existing_person(name)
            person_id = self._people_ids({target})[target]
            return self.db.execute(f"UPDATE {self._t['faces']} SET person_id = %s WHERE person_id = %s",
                                   (person_id, old_id)).rowcount

    def _existing_person(self, name: str) -> int:
        """The id of the person `name` names (its NFKC forms too), else one sentence."""
        row = self.db.execute(f"SELECT id FROM {self._t['people']} WHERE name = ANY(%s) ORDER BY "
                              "array_position(%s, name) LIMIT 1", (name_keys(name), name_keys(name))).fetchone()
        if row is None:
            raise UsageError(f"No one called {name!r} is in {self._shown}; see `facenet gallery list {self._shown}`.")
        return row[0]

    def _face_person(self, face_id: int) -> str:
        row = None
        if valid_face_id(int(face_id)):
            row = self.db.execute(f"SELECT p.name FROM {self._t['faces']} f JOIN {self._t['people']} p "
                                  "ON p.id = f.person_id WHERE f.id = %s", (int(face_id),)).fetchone()
        if row is None:
            raise UsageError(f"No face with id {face_id} is in {self._shown}; see "
                             f"`facenet gallery list {self._shown} --with-faces`.")
        return row[0]

    # -- thumbnails, rows of `thumbs`

    def save_thumbnail(self, image_sha256: str, jpeg: bytes) -> None:
        self._refuse_if_read_only()
        with self._sql("write"):
            self.db.execute(f"INSERT INTO {self._t['thumbs']}(image_sha256, jpeg) VALUES (%s, %s) "
                            "ON CONFLICT (image_sha256) DO UPDATE SET jpeg = excluded.jpeg", (image_sha256, jpeg))

    def thumbnail(self, image_sha256: str) -> bytes | None:
        with self._sql("read"):
            row = self.db.execute(f"SELECT jpeg FROM {self._t['thumbs']} WHERE image_sha256 = %s",
                                  (image_sha256,)).fetchone()
        return bytes(row[0]) if row else None

    def thumbnails(self) -> set[str]:
        with self._sql("read"):
            return {r[0] for r in self.db.execute(f"SELECT image_sha256 FROM {self._t['thumbs']}")}


class DatabaseIndex:
    """`search(queries, k)` by the gallery's HNSW index in the database (PostgresGallery.nearest);
    deeper than the index answers, an exact scan of the enrolment read."""

    def __init__(self, store: PostgresGallery, enrolment: Enrolment):
        self.store, self.enrolment = store, enrolment

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k > MAX_EF_SEARCH:
            return ExactIndex(self.enrolment).search(queries, k)
        return self.store.nearest(queries, k)


# What a store call was doing, for its error sentence: (verb, past participle).
_DOING = {"open": ("open", "opened"), "read": ("read", "read"), "write": ("change", "changed")}


def _passwords(location: str) -> list[str]:
    """The passwords a location spells (in its user part, or as a `password=` parameter)."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    found = [value for key, value in parse_qsl(urlsplit(location).query) if key.lower() == "password"]
    user_password = URL_USER_PASSWORD.match(location)
    if user_password:
        found += [user_password.group(2), unquote(user_password.group(2))]
    return sorted({p for p in found if p}, key=len, reverse=True)


def _first_line(exc: BaseException) -> str:
    """The first line of a database error, without a trailing full stop (libpq's text: it names
    host and user, never the password)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".")


def _open(location, *, create: bool, read_only: bool | None, timeout: float, salvage: bool) -> PostgresGallery:
    return PostgresGallery(str(location), create=create, timeout=timeout, salvage=salvage, read_only=read_only)


register_store("postgresql", _open)
register_store("postgres", _open)
