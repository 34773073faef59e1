"""A big gallery in PostgreSQL/pgvector against the SQLite file with its faiss index, side by side.

    python benchmarks/gallery_postgres.py                      # 1,000,000 faces (a long run)
    python benchmarks/gallery_postgres.py --faces 20000        # a smaller gallery, same steps
    python benchmarks/gallery_postgres.py --quick              # a few thousand faces of the quick set
    python benchmarks/gallery_postgres.py --postgres URL       # a server of yours (default: one started
                                                               # with pgserver in work/gallery-postgres/)

The faces are benchmarks/search_million.py's (its `make_set`: real LFW embeddings plus perturbed
copies, 1,000 held-out "new photo" queries and 1,000 "variant" ones; --quick its small set). Both
galleries are filled through the gallery store, as `facenet gallery copy` fills one: `add_faces`
in transactions of --batch faces. Then, per store:
- build s: adding the faces plus building the search index: for SQLite the faiss index file that
  `search` builds on first use; for PostgreSQL the HNSW index, which the store builds after a
  bulk load into an empty gallery (store/postgres.py BULK_FACES) and grows with each later insert;
- REINDEX s (PostgreSQL): rebuilding that index alone;
- disk MB: the gallery file and its index file / the gallery's tables and indexes in PostgreSQL;
- read s: `snapshot()`, the gallery read every `facenet search` and `identify` makes first;
- p50/p99 ms: one query at a time on one thread through the store's own index, as `search`
  asks it (`neighbour_index(...).index.search(q, 1)`: faiss in process; pgvector HNSW in the
  server, then exact distances of the shortlist), for each hnsw.ef_search given;
- recall@1: the store's first face is exact search's first face.
Prints the table and writes work/gallery-postgres[-quick]/result.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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


def latencies(index, queries: np.ndarray, truth_rows: np.ndarray, ids: np.ndarray, people: np.ndarray) -> dict:
    """Single-query latency and recall@1 (the exact first face; its person) through `index`."""
    from threadpoolctl import threadpool_limits

    found, took = [], []
    with threadpool_limits(1):
        for q in queries[:20]:  # warm-up
            index.search(q[None], 1)
        for q in queries:
            t0 = time.perf_counter()
            answer, _ = index.search(q[None], 1)
            took.append(time.perf_counter() - t0)
            found.append(int(answer[0, 0]))
    ms = np.array(took) * 1000
    rows = np.searchsorted(ids, found)  # ids ascend with the rows: a fresh gallery numbers them in order
    return {"queries": len(queries), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "recall@1": round(float((np.array(found) == ids[truth_rows]).mean()), 4),
            "person_recall@1": round(float((people[np.minimum(rows, len(ids) - 1)] == people[truth_rows]).mean()), 4)}


def measure_sqlite(data, people, query_sets, truth, folder: Path, batch: int) -> dict:
    from facenet_cli.store.face_index import index_path
    from facenet_cli.store.registry import open_store

    path = folder / "bench.gallery"
    for old in (path, index_path(path)):
        old.unlink(missing_ok=True)
    row = {"store": "SQLite + faiss"}
    with open_store(path, create=True) as store:
        started = time.perf_counter()
        ids = fill(store, data, batch)
        added = time.perf_counter() - started
        state, enrolment = store.snapshot()
        started = time.perf_counter()
        index = store.neighbour_index(state, enrolment).index  # built and saved beside the file
        row["build_s"] = round(added + time.perf_counter() - started, 1)
        row["add_s"] = round(added, 1)
        started = time.perf_counter()
        store.snapshot()
        row["read_s"] = round(time.perf_counter() - started, 2)
        row["disk_mb"] = round((path.stat().st_size + index_path(path).stat().st_size) / 2 ** 20, 1)
        for label, queries in query_sets.items():
            row[label] = latencies(index, queries, truth[label], ids, people)
    return row


def measure_postgres(url: str, data, people, query_sets, truth, batch: int, ef_values: list[int],
                     threads: int) -> list:
    import psycopg

    from facenet_cli.store import postgres
    from facenet_cli.store.registry import open_store

    location = f"{url}{'&' if '?' in url else '?'}gallery=bench"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DROP SCHEMA IF EXISTS bench CASCADE")
    rows = []
    with open_store(location, create=True) as store:
        started = time.perf_counter()
        ids = fill(store, data, batch)  # the first batch into the empty gallery is loaded without the index,
        store.keep_index_current()      # which is then built in one go, as `gallery copy` does
        added = time.perf_counter() - started
        db = store.db
        # A bulk rebuild of the HNSW index: what a bulk load would do after the rows are in.
        db.execute("SET maintenance_work_mem = '2GB'")
        db.execute(f"SET max_parallel_maintenance_workers = {max(0, threads - 1)}")
        started = time.perf_counter()
        db.execute("REINDEX INDEX bench.faces_embedding_hnsw")
        reindex = time.perf_counter() - started
        db.execute("VACUUM ANALYZE bench.faces")
        size = db.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                          "ON n.oid = c.relnamespace WHERE n.nspname = 'bench' AND c.relkind = 'r'").fetchone()[0]
        hnsw = db.execute("SELECT pg_relation_size('bench.faces_embedding_hnsw')").fetchone()[0]
        started = time.perf_counter()
        state, enrolment = store.snapshot()
        read = time.perf_counter() - started
        index = store.neighbour_index(state, enrolment).index
        for ef in ef_values:
            postgres.MIN_EF_SEARCH = ef
            row = {"store": f"PostgreSQL + pgvector (ef_search {ef})", "build_s": round(added, 1),
                   "add_s": round(added, 1), "reindex_s": round(reindex, 1), "disk_mb": round(int(size) / 2 ** 20, 1),
                   "hnsw_mb": round(int(hnsw) / 2 ** 20, 1), "read_s": round(read, 2)}
            for label, queries in query_sets.items():
                row[label] = latencies(index, queries, truth[label], ids, people)
            rows.append(row)
    return rows


def start_server(folder: Path):
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in a container, a fallback is used
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(folder, cleanup_mode="stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--faces", type=int, default=None, help="gallery size (default 1,000,000; 5,000 with --quick)")
    parser.add_argument("--postgres", default=None, help="a libpq URL of a server with pgvector (default: start one "
                        "with pgserver in work/gallery-postgres/pgdata, removed after)")
    parser.add_argument("--batch", type=int, default=10_000, help="faces per add_faces transaction")
    parser.add_argument("--ef-search", default="40,100,200", help="hnsw.ef_search values to measure, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="workers for the REINDEX (queries use one)")
    args = parser.parse_args()
    faces = args.faces or (5000 if args.quick else 1_000_000)
    out = WORK / ("gallery-postgres-quick" if args.quick else "gallery-postgres")
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    data, people, query_sets, _ = make_set(faces, args.quick)
    truth = {label: exact_top1(data, q) for label, q in query_sets.items()}
    server = None
    url = args.postgres
    if url is None:
        server = start_server(out / "pgdata")
        url = server.get_uri()
    try:
        rows = [measure_sqlite(data, people, query_sets, truth, out, args.batch)]
        rows += measure_postgres(url, data, people, query_sets, truth, args.batch,
                                 [int(x) for x in args.ef_search.split(",")], args.threads)
    finally:
        if server is not None:  # the server this run started, and its files (hundreds of MB at a million faces)
            server.cleanup()
            shutil.rmtree(out / "pgdata", ignore_errors=True)
    result = {"faces": len(data), "batch": args.batch, "quick": args.quick, "rows": rows,
              "load_average": [round(x, 2) for x in load_before] + [round(os.getloadavg()[0], 2)]}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    for made in ("bench.gallery", "bench.gallery.index"):
        (out / made).unlink(missing_ok=True)
    shutil.rmtree(out / "bench.gallery.thumbs", ignore_errors=True)
    labels = list(query_sets)
    print(f"\n{len(data):,} faces, added in transactions of {args.batch:,}; queries one at a time on one thread; "
          f"load average before/after {result['load_average']}\n")
    print("| store | build s | REINDEX s | disk MB | read s | " +
          " | ".join(f"{label} ({len(query_sets[label])}) p50 ms | p99 ms | recall@1 | same person"
                     for label in labels) + " |")
    print("|---|---|---|---|---|" + "---|---|---|---|" * len(labels))
    for row in rows:
        print(f"| {row['store']} | {row['build_s']} | {row.get('reindex_s', '-')} | {row['disk_mb']} | "
              f"{row['read_s']} | " + " | ".join(f"{row[label]['p50_ms']} | {row[label]['p99_ms']} | "
                                                f"{row[label]['recall@1']} | {row[label]['person_recall@1']}"
                                                for label in labels) + " |")


if __name__ == "__main__":
    main()
