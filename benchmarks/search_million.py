"""Face search over a million faces: the gallery index (facenet_cli/store/face_index.py) against exact search.

    python benchmarks/search_million.py                  # 1,000,000 faces, the library facenet uses
    python benchmarks/search_million.py --compare        # faiss-cpu, hnswlib, usearch side by side (200,000 faces)
    python benchmarks/search_million.py --exact-sizes    # where exact search gets slow (identify, search)
    python benchmarks/search_million.py --quick          # the same steps on a few thousand faces

The faces (written down before measuring):
1. Embeddings: the README's View 2 pipeline on all 13,233 LFW images, work/lfw-all/reps (made by
   `python benchmarks/cluster_lfw.py` when missing; --quick makes a few dozen of its own).
2. How far a real change of a photo moves an embedding: benchmarks/cluster_lfw.py re-embedded 7
   changes (mirror, darker, brighter, low contrast, 7 % zoom, 5x4 px shift, blur + JPEG 40) of
   200 aligned LFW crops with the real network (mean squared distance 0.0105, cached in
   work/cluster-100k/scale.json; remade when missing).
3. The million: 1,000 real LFW faces are held out as "new photo" queries (chosen among people
   with at least 2 images, so each one's person stays in the gallery); every other real face
   plus perturbed copies of it fill the gallery up to 1,000,000 faces (about 81 per photo). A
   copy is cluster_lfw.perturb's: the real embedding moved along LFW's own within-person
   directions by the measured mean squared distance, back on the unit sphere, so distances
   between same and different people stay like LFW's.
4. Queries, both with their person in the gallery: "new photo" (a held-out real LFW face of an
   enrolled person) and "variant" (a fresh perturbed copy of an enrolled photo, not in the gallery).
5. Figures: build time (2 threads), index memory (the index file's size and the process's RSS
   growth), single-query latency p50/p99 on ONE thread (one query at a time, as `identify`
   asks), and recall@1 against exact search (the ANN's first face is exact search's first face).
Each run is one process; ru_maxrss is its own peak. Prints the README table and writes
work/search-million[-quick]/result.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUICK_HELP, ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
WORK = ROOT / "work"
HELD_OUT = 1000


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ the faces

def real_faces(quick: bool):
    """(embeddings, people, variant distance) of the real LFW faces and the measured size of a real change."""
    from cluster_lfw import ensure_reps, variant_spread

    from facenet_cli import read_reps

    if quick:
        reps = read_reps(ensure_reps(WORK / "cluster-lfw-quick", True))
        return reps.embeddings.astype(np.float32), np.array(reps.people), variant_spread(reps, 6)["mean"]
    reps_dir = WORK / "lfw-all" / "reps"
    if not (reps_dir / "meta.json").is_file():
        ensure_reps(WORK / "lfw-all", False)
    reps = read_reps(reps_dir)
    scale_info = WORK / "cluster-100k" / "scale.json"
    if scale_info.is_file():
        distance = json.loads(scale_info.read_text())["real_variant_distance"]["mean"]
    else:
        distance = variant_spread(reps, 200)["mean"]
    return reps.embeddings.astype(np.float32), np.array(reps.people), distance


def make_set(total: int, quick: bool, queries: int = HELD_OUT, seed: int = 0):
    """The gallery (embeddings, people) and the two query sets, as the module docstring says."""
    from cluster_lfw import perturb

    embeddings, people, distance = real_faces(quick)
    rng = np.random.default_rng(seed)
    names, counts = np.unique(people, return_counts=True)
    several = np.flatnonzero(np.isin(people, names[counts >= 2]))
    held = np.zeros(len(people), bool)
    # Hold out at most one photo per person so the person keeps a photo in the gallery.
    for row in rng.permutation(several):
        if held.sum() >= queries:
            break
        if not held[people == people[row]].any() and (people == people[row]).sum() >= 2:
            held[row] = True
    base, base_people = embeddings[~held], people[~held]
    out = np.empty((total, embeddings.shape[1]), np.float32)
    out_people = np.empty(total, dtype=base_people.dtype)
    filled = min(len(base), total)
    out[:filled], out_people[:filled] = base[:filled], base_people[:filled]
    round_no = 0
    while filled < total:  # a few copies per photo at a time keeps the temporary arrays small
        copies, _ = perturb(base, base_people, 4, distance, seed=seed + 10 + round_no)
        take = min(len(copies), total - filled)
        out[filled:filled + take] = copies[:take]
        out_people[filled:filled + take] = np.repeat(base_people, 4)[:take]
        filled += take
        round_no += 1
        del copies
    pick = rng.choice(len(base), min(queries, len(base)), replace=False)
    variants, _ = perturb(base[pick], base_people[pick], 1, distance, seed=seed + 1)
    return out, out_people, {"new photo": embeddings[held], "variant": variants}, distance


def exact_top1(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The exact nearest face of each query (squared L2 on unit vectors = 2 - 2 cos)."""
    best = np.full(len(queries), -np.inf, np.float32)
    where = np.zeros(len(queries), np.int64)
    for start in range(0, len(gallery), 131072):
        sims = queries @ gallery[start:start + 131072].T
        arg = sims.argmax(1)
        value = sims[np.arange(len(queries)), arg]
        better = value > best
        best[better], where[better] = value[better], arg[better] + start
    return where


# ------------------------------------------------------------------ the libraries

def build(library: str, data: np.ndarray, params: dict, threads: int):
    if library == "usearch":
        from usearch.index import Index

        index = Index(ndim=data.shape[1], metric="l2sq", dtype="f32", connectivity=params["M"],
                      expansion_add=params["ef_construction"], expansion_search=params["ef_search"])
        index.add(np.arange(len(data)), data, threads=threads, log=False)
        return index
    if library == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(data.shape[1], params["M"])
        index.hnsw.efConstruction = params["ef_construction"]
        index.add(data)
        index.hnsw.efSearch = params["ef_search"]
        return index
    if library == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="l2", dim=data.shape[1])
        index.init_index(max_elements=len(data), ef_construction=params["ef_construction"], M=params["M"])
        index.set_num_threads(threads)
        index.add_items(data, np.arange(len(data)))
        index.set_ef(params["ef_search"])
        return index
    raise ValueError(library)


def query_one(library: str, index, query: np.ndarray) -> int:
    if library == "usearch":
        return int(index.search(query, 1, threads=1).keys[0])
    if library == "faiss":
        return int(index.search(query[None], 1)[1][0, 0])
    return int(index.knn_query(query[None], k=1)[0][0, 0])


def single_thread(library: str, index) -> None:
    if library == "faiss":
        import faiss

        faiss.omp_set_num_threads(1)
    elif library == "hnswlib":
        index.set_num_threads(1)


def measure_library(library: str, data: np.ndarray, query_sets: dict, truth: dict, params: dict,
                    threads: int) -> dict:
    before = rss_mb()
    started = time.perf_counter()
    index = build(library, data, params, threads)
    build_s = time.perf_counter() - started
    grown = rss_mb() - before
    single_thread(library, index)
    row = {"library": library, "params": params, "build_s": round(build_s, 1), "rss_growth_mb": round(grown)}
    for label, queries in query_sets.items():
        latencies, found = [], []
        for q in queries[:50]:  # warm-up
            query_one(library, index, q)
        for q in queries:
            t0 = time.perf_counter()
            found.append(query_one(library, index, q))
            latencies.append(time.perf_counter() - t0)
        ms = np.array(latencies) * 1000
        row[label] = {"queries": len(queries), "p50_ms": round(float(np.percentile(ms, 50)), 3),
                      "p99_ms": round(float(np.percentile(ms, 99)), 3),
                      "recall@1": round(float((np.array(found) == truth[label]).mean()), 4)}
    return row


# ------------------------------------------------------------------ modes

def run_compare(args) -> dict:
    data, _, query_sets, distance = make_set(args.faces, args.quick)
    truth = {label: exact_top1(data, q) for label, q in query_sets.items()}
    params = {"M": 16, "ef_construction": 128, "ef_search": 64}
    rows = [measure_library(lib, data, query_sets, truth, params, args.threads)
            for lib in ("faiss", "hnswlib", "usearch")]
    print(f"\n{len(data):,} faces, HNSW M={params['M']} ef_construction={params['ef_construction']} "
          f"ef_search={params['ef_search']}, build on {args.threads} threads, queries on 1; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| library | build s | RSS growth MB | new photo p50 / p99 ms | recall@1 | variant p50 / p99 ms | recall@1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["new photo"], r["variant"]
        print(f"| {r['library']} | {r['build_s']} | {r['rss_growth_mb']} | {a['p50_ms']} / {a['p99_ms']} | "
              f"{a['recall@1']} | {b['p50_ms']} / {b['p99_ms']} | {b['recall@1']} |")
    return {"mode": "compare", "faces": len(data), "rows": rows, "variant_distance": distance}


def run_million(args) -> dict:
    """The gallery index itself (FaceIndex: the library and parameters facenet uses) on `--faces`."""
    from facenet_cli.store.face_index import FaceIndex

    load_before = os.getloadavg()
    started = time.perf_counter()
    data, people, query_sets, distance = make_set(args.faces, args.quick)
    make_s = time.perf_counter() - started
    truth = {label: exact_top1(data, q) for label, q in query_sets.items()}
    keys = np.arange(1, len(data) + 1, dtype=np.int64)  # gallery face ids start at 1
    out = WORK / ("search-million-quick" if args.quick else "search-million")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / f"index-{len(data)}.bin"
    before = rss_mb()
    if args.reuse and saved.is_file():  # the index a previous run built of this same (seeded) set
        previous = json.loads((out / "result.json").read_text())
        started = time.perf_counter()
        payload = saved.read_bytes()
        index = FaceIndex.from_bytes(payload)
        load_s = time.perf_counter() - started
        build_s, save_s, grown = previous["build_s"], previous["serialise_s"], previous["rss_growth_mb"]
    else:
        started = time.perf_counter()
        index = FaceIndex.build(data, keys, threads=args.threads)
        build_s = time.perf_counter() - started
        grown = rss_mb() - before
        started = time.perf_counter()
        payload = index.to_bytes()
        save_s = time.perf_counter() - started
        started = time.perf_counter()
        FaceIndex.from_bytes(payload)
        load_s = time.perf_counter() - started
        saved.write_bytes(payload)
    result = {"mode": "million", "faces": len(data), "library": index.library, "params": index.params,
              "variant_distance": distance, "make_set_s": round(make_s, 1), "build_s": round(build_s, 1),
              "build_threads": args.threads, "index_bytes": len(payload), "rss_growth_mb": round(grown),
              "serialise_s": round(save_s, 2), "load_s": round(load_s, 2)}
    del payload
    chosen = index.params["ef_search"]
    from types import SimpleNamespace

    from facenet_cli.recognition.search import refine_by_person

    # What `search` and `identify` do with the index's answer: every face of the person it names
    # first is scored exactly (identification.refine_by_person); "index alone" rows are the raw graph.
    # Ordered by person, as a gallery's enrolment is (gallery.py reads faces ORDER BY person).
    person_index = np.unique(people, return_inverse=True)[1]
    by_person = np.argsort(person_index, kind="stable")
    enrolled = SimpleNamespace(embeddings=data[by_person], person_index=person_index[by_person],
                               face_ids=keys[by_person])
    for label, queries in query_sets.items():
        exact_ms = []
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # exact search on one core too
            for q in queries[:20]:
                t0 = time.perf_counter()
                exact_top1(data, q[None])
                exact_ms.append((time.perf_counter() - t0) * 1000)
        for ef in sorted({64, chosen, 256, 512, 1024}):
            index.params["ef_search"] = ef
            for refined in (False, True):
                def ask(q):
                    ids, distances = index.search(q[None], 1)
                    return refine_by_person(q[None], ids, distances, enrolled, 1)[0] if refined else ids

                latencies, found = [], []
                with threadpool_limits(1):
                    for q in queries[:50]:
                        ask(q)
                    for q in queries:
                        t0 = time.perf_counter()
                        ids = ask(q)
                        latencies.append(time.perf_counter() - t0)
                        found.append(int(ids[0, 0]) - 1)
                ms = np.array(latencies) * 1000
                found = np.array(found)
                result[f"{label}{' (index alone)' if not refined else ''} ef{ef}"] = {
                    "queries": len(queries), "ef_search": ef, "p50_ms": round(float(np.percentile(ms, 50)), 3),
                    "p99_ms": round(float(np.percentile(ms, 99)), 3),
                    "recall@1": round(float((found == truth[label]).mean()), 4),
                    "person_recall@1": round(float((people[found] == people[truth[label]]).mean()), 4),
                    "exact_p50_ms": round(float(np.median(exact_ms)), 1)}
        result[label] = result[f"{label} ef{chosen}"]
    index.params["ef_search"] = chosen
    result["peak_rss_mb"] = round(peak_rss_mb())
    result["load_average"] = [round(x, 2) for x in load_before] + [round(os.getloadavg()[0], 2)]
    print(f"\n{result['faces']:,} faces ({args.threads}-thread build, 1-thread queries), {index.library} "
          f"{index.params}; load average before/after {result['load_average']}\n")
    print("| faces | build s | index MB | peak RSS MB | queries | ef_search | p50 ms | p99 ms | recall@1 | "
          "same person as exact | exact p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in result.items():
        if isinstance(r, dict) and "ef_search" in r and " ef" in key:
            print(f"| {result['faces']:,} | {result['build_s']} | {result['index_bytes'] / 2 ** 20:.0f} | "
                  f"{result['peak_rss_mb']} | {key.split(' ef')[0]} ({r['queries']}) | {r['ef_search']}"
                  f"{' (used)' if r['ef_search'] == chosen else ''} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['recall@1']} | {r['person_recall@1']} | {r['exact_p50_ms']} |")
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_exact_sizes(args) -> dict:
    """Per-query time of exact `identify` (default method) and `search` by gallery size, one thread."""
    from threadpoolctl import threadpool_limits

    from facenet_cli.models.catalogue import get_record
    from facenet_cli.store.face_index import FaceIndex
    from facenet_cli.store.types import Enrolment, GalleryModel
    from facenet_cli.recognition.identify import matcher_for

    sizes = [3000, 10000, 30000, 100000] if not args.quick else [500, 2000]
    data, people, query_sets, _ = make_set(max(sizes), args.quick)
    queries = query_sets["new photo"][:200]
    model = GalleryModel("dlib-resnet.v1", "dlib-resnet.v1", "", {}, 128, True, get_record("dlib-resnet.v1").to_dict())
    rows = []
    with threadpool_limits(1):
        for size in sizes:
            # One face per person: the worst case for the per-person templates (people = faces).
            enrolment = Enrolment(data[:size], np.arange(size), [f"p{i:07d}" for i in range(size)],
                                  np.arange(1, size + 1), model)
            row = {"faces": size}
            for how in ("exact", "index"):
                matcher = matcher_for(enrolment)
                if how == "index":
                    matcher.use_index(FaceIndex.build(enrolment.embeddings, enrolment.face_ids, threads=args.threads))
                times = []
                for q in queries:
                    t0 = time.perf_counter()
                    matcher.answer(q[None])
                    times.append((time.perf_counter() - t0) * 1000)
                row[how] = (round(float(np.median(times)), 2), round(float(np.percentile(times, 99)), 2))
            rows.append(row)
    print("\n| faces (one per person) | exact identify p50 / p99 ms | with the index p50 / p99 ms |\n|---|---|---|")
    for r in rows:
        print(f"| {r['faces']:,} | {r['exact'][0]} / {r['exact'][1]} | {r['index'][0]} / {r['index'][1]} |")
    return {"mode": "exact-sizes", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--compare", action="store_true", help="faiss-cpu, hnswlib and usearch side by side")
    parser.add_argument("--exact-sizes", action="store_true", help="exact identify time by gallery size")
    parser.add_argument("--faces", type=int, default=None, help="gallery size (default 1,000,000; 200,000 with "
                        "--compare; 5,000 with --quick)")
    parser.add_argument("--reuse", action="store_true", help="load the index the last run saved in "
                        "work/search-million/ instead of building it again (same seeded set)")
    parser.add_argument("--threads", type=int, default=2, help="threads for building (queries always use one)")
    args = parser.parse_args()
    if args.faces is None:
        args.faces = 5000 if args.quick else (200_000 if args.compare else 1_000_000)
    if args.compare:
        run_compare(args)
    elif args.exact_sizes:
        run_exact_sizes(args)
    else:
        run_million(args)


if __name__ == "__main__":
    main()
