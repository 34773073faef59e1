"""A big gallery in PostgreSQL/pgvector against the SQLite file with its faiss index, side by side.

    python benchmarks/gallery_postgres.py                      # 1,000,000 faces (a long run)
    python benchmarks/gallery_postgres.py --faces 20000        # a smaller gallery, same steps
    python benchmarks/gallery_postgres.py --quick              # a few thousand faces of the quick set
    python benchmarks/gallery_postgres.py --reuse              # measure the kept galleries again, no refill
    python benchmarks/gallery_postgres.py --reindex            # also time rebuilding the HNSW index alone
    python benchmarks/gallery_postgres.py --postgres URL       # a server of yours (default: one started
                                                               # with pgserver in work/gallery-postgres/)

The faces are benchmarks/search_million.py's (its `make_set`: real LFW embeddings plus perturbed
copies, 1,000 held-out "new photo" queries and 1,000 "variant" ones; --quick its small set). Both
galleries are filled through the gallery store, as `facenet gallery copy` fills one: `add_faces`
in transactions of --batch faces. Then, per store:
- build s: adding the faces plus building the search index ("index s" of it): for SQLite the
  faiss index file that `search` builds on first use; for PostgreSQL the HNSW index, which the
  store builds after a bulk load into an empty gallery (store/postgres.py BULK_FACES and
  keep_index_current) and grows with each later insert;
- REINDEX s (PostgreSQL, with --reindex): rebuilding that index alone;
- disk MB: the gallery file and its index file / the gallery's tables and indexes in PostgreSQL;
- read s: `snapshot()`, every face read (what `facenet search` does first on SQLite; on
  PostgreSQL it asks the database instead);
- p50/p99 ms: one query at a time on one thread through the store's index alone
  (`neighbour_index(...).index.search(q, 1)`: faiss in process; pgvector HNSW in the server,
  then exact distances of the shortlist), for each hnsw.ef_search given;
- the same through `facenet search`'s own path once the photo is embedded (second table):
  recognition/search.py `search_vectors(store, q, top=5, use_index="auto")` on the store opened
  once, for --search-queries queries of each set (PostgreSQL, at its default ef_search) and
  --sqlite-search-queries (SQLite, where each call reads the whole gallery and its index file);
- recall@1: the first face is exact search's first face ("same person": its person).
The server this script starts (pgserver's PostgreSQL 16 with pgvector 0.6.2, data in
work/gallery-postgres[-quick]/pgdata, kept for --reuse) is set up as a big gallery's server would
be: shared_buffers 3GB (the faces and their HNSW index stay in PostgreSQL's cache; the default
128MB would send most page reads of a query to the kernel) and max_parallel_maintenance_workers
--threads - 1 (the index builds use --threads processes). pgvector builds an HNSW index fast
only while the whole graph fits in maintenance_work_mem (about 1.7 KB a face at m=32, measured:
8MB held 4,825 faces); past that each further face is inserted on disk, ~100 times slower. The
store raises maintenance_work_mem for its build to 64MB + 2 KB a face (2.0 GB at a million) and
the REINDEX here asks the same; a server of your own (--postgres) needs that much memory free.
--reuse reads the build figures of the earlier run from result.json and measures the rest again.
Prints the table and writes work/gallery-postgres[-quick]/result.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUICK_HELP, ROOT  # noqa: E402
from search_million import exact_top1, make_set  # noqa: E402

sys.path.insert(0, str(ROOT))
WORK = ROOT / "work"


def fill(store, data: np.ndarray, batch: int) -> np.ndarray:
    """Add every face through the store; the face id of each row."""
    from facenet_cli.models.catalogue import CATALOGUE

    store.bind(CATALOGUE["dlib-resnet.v1"], "dlib-resnet.v1", True)
    ids = np.empty(len(data), np.int64)
    for start in range(0, len(data), batch):
        rows = [(f"p{i % 5000}", data[i], f"face/{i}.jpg", f"{i:064x}", None)
                for i in range(start, min(start + batch, len(data)))]
        ids[start:start + len(rows)] = store.add_faces(rows)
    return ids


def latencies(first_face, queries: np.ndarray, truth_rows: np.ndarray, ids: np.ndarray, people: np.ndarray,
              warm_up: int = 20) -> dict:
    """Single-query latency and recall@1 (the exact first face; its person) of `first_face(query)`."""
    from threadpoolctl import threadpool_limits

    found, took = [], []
    with threadpool_limits(1):
        for q in queries[:warm_up]:
            first_face(q)
        for q in queries:
            t0 = time.perf_counter()
            found.append(first_face(q))
            took.append(time.perf_counter() - t0)
    ms = np.array(took) * 1000
    rows = np.searchsorted(ids, found)  # ids ascend with the rows: a fresh gallery numbers them in order
    return {"queries": len(queries), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "recall@1": round(float((np.array(found) == ids[truth_rows]).mean()), 4),
            "person_recall@1": round(float((people[np.minimum(rows, len(ids) - 1)] == people[truth_rows]).mean()), 4)}


def index_first(index):
    """The first face as the store's index answers it alone (`neighbour_index(...).index.search(q, 1)`)."""
    return lambda q: int(index.search(q[None], 1)[0][0, 0])


def search_first(store, modes: set):
    """The first face as `facenet search` finds it once the photo is embedded: search_vectors on the
    store opened once, top 5, --index auto (recognition/search.py); `modes` collects how it searched."""
    from facenet_cli.recognition.search import search_vectors

    def first(q):
        got = search_vectors(store, q[None], top=5, use_index="auto")
        modes.add(got.search)
        return int(got.ids[0, 0])
    return first


def via_search(store, query_sets, truth, ids, people, per_set: int) -> dict:
    """Latency and recall through search's public path, on the first `per_set` queries of each set."""
    modes: set = set()
    first = search_first(store, modes)
    figures = {label: latencies(first, queries[:per_set], truth[label][:per_set], ids, people, warm_up=2)
               for label, queries in query_sets.items()}
    return {"search": ", ".join(sorted(modes)), **figures}


def stored_ids(enrolment, faces: int, where: str) -> np.ndarray:
    """The face ids of a gallery kept from an earlier run, in row order (a fresh gallery numbers them in order)."""
    ids = np.sort(np.asarray(enrolment.face_ids if enrolment is not None else [], np.int64))
    if len(ids) != faces:
        sys.exit(f"--reuse: {where} holds {len(ids):,} faces, not {faces:,}; run without --reuse to fill it.")
    return ids


def measure_sqlite(data, people, query_sets, truth, folder: Path, batch: int, earlier: dict | None,
                   search_queries: int) -> dict:
    from facenet_cli.store.face_index import index_path
    from facenet_cli.store.registry import open_store

    path = folder / "bench.gallery"
    if earlier is None:
        for old in (path, index_path(path)):
            old.unlink(missing_ok=True)
    row = {"store": "SQLite + faiss"}
    with open_store(path, create=earlier is None) as store:
        if earlier is None:
            started = time.perf_counter()
            ids = fill(store, data, batch)
            added = time.perf_counter() - started
        state, enrolment = store.snapshot()
        started = time.perf_counter()
        index = store.neighbour_index(state, enrolment).index  # built and saved beside the file (--reuse: loaded)
        if earlier is None:
            row.update(build_s=round(added + time.perf_counter() - started, 1), add_s=round(added, 1),
                       index_s=round(time.perf_counter() - started, 1))
        else:
            ids = stored_ids(enrolment, len(data), str(path))
            row.update({k: earlier[k] for k in ("build_s", "add_s", "index_s") if k in earlier})
            row["load_index_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        store.snapshot()
        row["read_s"] = round(time.perf_counter() - started, 2)
        row["disk_mb"] = round((path.stat().st_size + index_path(path).stat().st_size) / 2 ** 20, 1)
        for label, queries in query_sets.items():
            row[label] = latencies(index_first(index), queries, truth[label], ids, people)
        row["via_search"] = via_search(store, query_sets, truth, ids, people, search_queries)
    return row


def measure_postgres(url: str, data, people, query_sets, truth, batch: int, ef_values: list[int],
                     threads: int, reindex: bool, earlier: dict | None, search_queries: int) -> list:
    import psycopg

    from facenet_cli.store import postgres
    from facenet_cli.store.registry import open_store

    location = f"{url}{'&' if '?' in url else '?'}gallery=bench"
    if earlier is None:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("DROP SCHEMA IF EXISTS bench CASCADE")
    rows = []
    with open_store(location, create=earlier is None) as store:
        db = store.db
        db.execute(f"SET max_parallel_maintenance_workers = {max(0, threads - 1)}")
        figures = {}
        if earlier is None:
            started = time.perf_counter()
            ids = fill(store, data, batch)  # the first batch into the empty gallery is loaded without the index,
            added = time.perf_counter() - started
            store.keep_index_current()      # which is then built in one go, as `gallery copy` does
            figures = {"build_s": round(time.perf_counter() - started, 1), "add_s": round(added, 1),
                       "index_s": round(time.perf_counter() - started - added, 1)}
            db.execute("VACUUM ANALYZE bench.faces")
        else:
            figures = {k: earlier[k] for k in ("build_s", "add_s", "index_s", "reindex_s") if k in earlier}
        if reindex:  # a rebuild of the HNSW index alone, with the memory the store's build asks for
            db.execute(f"SET maintenance_work_mem = '{65536 + 2 * len(data)}kB'")
            started = time.perf_counter()
            db.execute("REINDEX INDEX bench.faces_embedding_hnsw")
            figures["reindex_s"] = round(time.perf_counter() - started, 1)
        size = db.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                          "ON n.oid = c.relnamespace WHERE n.nspname = 'bench' AND c.relkind = 'r'").fetchone()[0]
        hnsw = db.execute("SELECT pg_relation_size('bench.faces_embedding_hnsw')").fetchone()[0]
        started = time.perf_counter()
        state, enrolment = store.snapshot()
        read = time.perf_counter() - started
        if earlier is not None:
            ids = stored_ids(enrolment, len(data), "the bench gallery in PostgreSQL")
        index = store.neighbour_index(state, enrolment).index
        default_ef = postgres.MIN_EF_SEARCH
        for ef in ef_values:
            postgres.MIN_EF_SEARCH = ef
            row = {"store": f"PostgreSQL + pgvector (ef_search {ef})", **figures,
                   "disk_mb": round(int(size) / 2 ** 20, 1), "hnsw_mb": round(int(hnsw) / 2 ** 20, 1),
                   "read_s": round(read, 2)}
            for label, queries in query_sets.items():
                row[label] = latencies(index_first(index), queries, truth[label], ids, people)
            if ef == default_ef:
                row["via_search"] = via_search(store, query_sets, truth, ids, people, search_queries)
            rows.append(row)
        postgres.MIN_EF_SEARCH = default_ef
    return rows


def start_server(folder: Path, threads: int):
    """A pgserver PostgreSQL in `folder` (kept for --reuse), configured as a server for a big gallery
    would be: shared_buffers large enough to hold the faces and their HNSW index (the default 128MB
    would send most of a query's page reads to the kernel), and index builds on `threads` processes."""
    import warnings

    import psycopg

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in a container, a fallback is used
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(folder, cleanup_mode="stop")
        wanted = {"shared_buffers": "3GB", "max_parallel_maintenance_workers": str(max(0, threads - 1))}
        with psycopg.connect(server.get_uri(), autocommit=True) as db:
            have = {name: db.execute("SELECT setting || coalesce(nullif(unit, '8kB'), '') FROM pg_settings "
                                     "WHERE name = %s", (name,)).fetchone()[0] for name in wanted}
            for name, value in wanted.items():
                db.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        if have["shared_buffers"] != "393216" or have["max_parallel_maintenance_workers"] != wanted[
                "max_parallel_maintenance_workers"]:  # 3GB in 8 kB pages; shared_buffers needs a restart
            server.cleanup()
            server = pgserver.get_server(folder, cleanup_mode="stop")
        return server


def main() -> None:
    from facenet_cli.atomic import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--faces", type=int, default=None, help="gallery size (default 1,000,000; 5,000 with --quick)")
    parser.add_argument("--postgres", default=None, help="a libpq URL of a server with pgvector (default: start one "
                        "with pgserver in work/gallery-postgres/pgdata, kept for --reuse)")
    parser.add_argument("--reuse", action="store_true", help="measure the galleries an earlier run of the same "
                        "size left (SQLite file, faiss index, PostgreSQL schema) again, without refilling them")
    parser.add_argument("--reindex", action="store_true", help="also time a REINDEX of the HNSW index alone")
    parser.add_argument("--batch", type=int, default=10_000, help="faces per add_faces transaction")
    parser.add_argument("--ef-search", default="40,100,200", help="hnsw.ef_search values to measure, comma-separated")
    parser.add_argument("--search-queries", type=int, default=1000, help="queries of each set timed through "
                        "`facenet search`'s path on PostgreSQL (search_vectors; default all)")
    parser.add_argument("--sqlite-search-queries", type=int, default=20, help="the same on SQLite, where each "
                        "search reads the whole gallery file and its index first (seconds at a million faces)")
    parser.add_argument("--threads", type=int, default=2, help="processes for the index builds (queries use one)")
    args = parser.parse_args()
    faces = args.faces or (5000 if args.quick else 1_000_000)
    out = WORK / ("gallery-postgres-quick" if args.quick else "gallery-postgres")
    out.mkdir(parents=True, exist_ok=True)
    earlier = None
    if args.reuse:
        try:
            earlier = json.loads((out / "result.json").read_text())
        except (OSError, ValueError):
            sys.exit(f"--reuse: no result of an earlier run in {out}; run without --reuse first.")
        if earlier["faces"] != faces:
            sys.exit(f"--reuse: the earlier run in {out} had {earlier['faces']:,} faces, not {faces:,}.")
    load_before = os.getloadavg()
    data, people, query_sets, _ = make_set(faces, args.quick)
    truth = {label: exact_top1(data, q) for label, q in query_sets.items()}
    server = None
    url = args.postgres
    if url is None:
        server = start_server(out / "pgdata", args.threads)
        url = server.get_uri()
    before = {row["store"].split(" (")[0]: row for row in earlier["rows"]} if earlier else {}
    try:
        rows = [measure_sqlite(data, people, query_sets, truth, out, args.batch, before.get("SQLite + faiss", {})
                               if earlier else None, args.sqlite_search_queries)]
        rows += measure_postgres(url, data, people, query_sets, truth, args.batch,
                                 [int(x) for x in args.ef_search.split(",")], args.threads, args.reindex,
                                 before.get("PostgreSQL + pgvector", {}) if earlier else None, args.search_queries)
    finally:
        if server is not None:  # the server this run started; its files stay in pgdata/ for --reuse
            server.cleanup()
    result = {"faces": len(data), "batch": args.batch, "quick": args.quick, "reused": args.reuse, "rows": rows,
              "load_average": [round(x, 2) for x in load_before] + [round(os.getloadavg()[0], 2)]}
    if earlier:
        result["filled_load_average"] = earlier.get("filled_load_average", earlier["load_average"])
    write_text_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    labels = list(query_sets)
    print(f"\n{len(data):,} faces, added in transactions of {args.batch:,}; queries one at a time on one thread; "
          f"load average before/after {result['load_average']}\n")
    print("| store | build s | of it index s | REINDEX s | disk MB | read s | " +
          " | ".join(f"{label} ({len(query_sets[label])}) p50 ms | p99 ms | recall@1 | same person"
                     for label in labels) + " |")
    print("|---|---|---|---|---|---|" + "---|---|---|---|" * len(labels))
    for row in rows:
        print(f"| {row['store']} | {row.get('build_s', '-')} | {row.get('index_s', '-')} | {row.get('reindex_s', '-')} | "
              f"{row['disk_mb']} | "
              f"{row['read_s']} | " + " | ".join(f"{row[label]['p50_ms']} | {row[label]['p99_ms']} | "
                                                f"{row[label]['recall@1']} | {row[label]['person_recall@1']}"
                                                for label in labels) + " |")

    print("\nThrough `facenet search`'s path once the photo is embedded (search_vectors, store opened once, "
          "top 5, --index auto), one query at a time on one thread:\n")
    print("| store | how it searched | " + " | ".join(f"{label} (queries) p50 ms | p99 ms | recall@1 | same person"
                                                   for label in labels) + " |")
    print("|---|---|" + "---|---|---|---|" * len(labels))
    for row in rows:
        if "via_search" in row:
            got = row["via_search"]
            print(f"| {row['store']} | {got['search']} | " + " | ".join(
                f"({got[label]['queries']}) {got[label]['p50_ms']} | {got[label]['p99_ms']} | {got[label]['recall@1']} | "
                f"{got[label]['person_recall@1']}" for label in labels) + " |")


if __name__ == "__main__":
    main()
