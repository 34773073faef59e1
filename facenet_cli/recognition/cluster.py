"""Group faces by person without labels and without being told how many people there are.

The engine, in three steps whose memory grows with N*k, never N^2:

1. `knn_graph`: each face's k nearest faces within the threshold, by blocked matrix products
   (a block of rows against all N faces at a time, the block sized so it stays under
   `BLOCK_BYTES`), so no N x N matrix is ever built.
2. `average_linkage`: agglomerative clustering over that graph with exact average linkage.
   For unit vectors the mean squared distance between two clusters A and B is
   2 - 2 (sum A . sum B) / (|A| |B|), so each cluster carries only its size and the sum of its
   vectors; candidate merges are the graph's edges, taken cheapest first, and merging stops
   at the threshold. No distance matrix, no dendrogram.
3. Clusters of one face go to the `unknown` group: a face that matches no one is not a person.

Why average linkage at its own threshold: the model's pair threshold (0.182 for
dlib-resnet.v1) is the wrong operating point for clustering, since chains of "same" pairs join
different people. The clustering threshold of each model is calibrated on LFW people disjoint
from those it is measured on (benchmarks/cluster_lfw.py) and stored in the model record as
`operating_points["cluster"]`.

`cluster_faces(SOURCE, OUT)` is the whole job: SOURCE is a `represent` output (labels.csv),
an aligned folder (align-spec.json) or a folder of photos (aligned and embedded first, with
the align and represent jobs); OUT receives clusters.csv, cluster-summary.json, a contact
sheet and, with `link`, one folder of links per cluster.
"""
from __future__ import annotations

import csv
import heapq
import io
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_open, temp_path, write_json_atomic, write_text_atomic
from ..errors import DataError, UsageError, write_error

CLUSTERS_FILE = "clusters.csv"
SUMMARY_FILE = "cluster-summary.json"
SHEET_FILE = "contact-sheet.png"
LINKS_DIR = "links"
UNKNOWN = "unknown"
LINK_MODES = ("symlink", "hardlink")

# Neighbours kept per face. LFW's largest person has 530 faces; each face needs only enough
# edges to reach its own people, the linkage does the rest. 100k faces x 32 edges is ~40 MB.
DEFAULT_K = 32
# Bytes of one block of the similarity matrix (rows x N float32) in the kNN search.
BLOCK_BYTES = 32 * 2**20


# ---------------------------------------------------------------------- the kNN graph

@dataclass
class KnnGraph:
    """Edges i -> j (each face to at most k others) with squared L2 distance <= max_distance."""

    rows: np.ndarray  # int32
    cols: np.ndarray  # int32
    distances: np.ndarray  # float32
    count: int  # faces
    k: int
    max_distance: float
    block_rows: int  # rows per block in the search: a block is block_rows x count floats
    blocks: int

    @property
    def edges(self) -> int:
        return len(self.rows)


def block_rows_for(count: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that one block of similarities (rows x count float32) fits block_bytes."""
    return int(max(1, min(count, block_bytes // (4 * max(count, 1)))))


def knn_graph(embeddings: np.ndarray, k: int = DEFAULT_K, max_distance: float = 2.0,
              block_bytes: int = BLOCK_BYTES,
              on_block: Callable[[int], None] | None = None) -> KnnGraph:
    """Each face's (at most) k nearest other faces within `max_distance` (squared L2).

    Exact: every block of rows is compared with all faces by one matrix product; only the
    entries within `max_distance` are kept and of those the k smallest per row. Memory is one
    block (`block_bytes`) plus the N*k edges.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise UsageError(f"knn_graph needs an N x D array of embeddings, got shape {x.shape}.")
    if k < 1:
        raise UsageError(f"k (neighbours per face) must be at least 1, not {k}.")
    n = len(x)
    norms = np.einsum("ij,ij->i", x, x)
    step = block_rows_for(n, block_bytes)
    rows_out, cols_out, dist_out = [], [], []
    blocks = 0
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b <= t  <=>  a.b >= (|a|^2 + |b|^2 - t) / 2. For unit vectors
    # (every model's output) that is one bound for the whole block: one pass over it, not four.
    unit = bool(np.abs(norms - 1.0).max() < 1e-3)
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = x[start:stop] @ x.T
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        if unit:
            r, c = np.nonzero(block >= (2.0 - max_distance) / 2 - 1e-3)
        else:
            r, c = np.nonzero(2.0 * block >= norms[start:stop, None] + norms[None, :] - max_distance - 1e-3)
        d = norms[start + r] + norms[c] - 2.0 * block[r, c]
        del block
        inside = d <= max_distance
        r, c, d = r[inside], c[inside], d[inside]
        if len(r):
            # Keep the k nearest per row: sort by (row, distance), then rank within each row.
            order = np.lexsort((d, r))
            r, c, d = r[order], c[order], d[order]
            first = np.searchsorted(r, r, side="left")
            keep = (np.arange(len(r)) - first) < k
            rows_out.append((r[keep] + start).astype(np.int32))
            cols_out.append(c[keep].astype(np.int32))
            dist_out.append(np.maximum(d[keep], 0.0).astype(np.float32))
        blocks += 1
        if on_block:
            on_block(stop - start)
    cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
    return KnnGraph(cat(rows_out, np.int32), cat(cols_out, np.int32), cat(dist_out, np.float32),
                    n, k, float(max_distance), step, blocks)


# ---------------------------------------------------------------------- average linkage

def average_linkage(embeddings: np.ndarray, graph: KnnGraph, threshold: float) -> np.ndarray:
    """Cluster id (the index of a member face) for every face: average linkage over the graph.

    Two clusters merge, cheapest first, while the mean squared distance over all their cross
    pairs is <= threshold; only clusters joined by a graph edge are candidates. Each cluster
    carries its size and vector sum, which give that mean exactly. Edges are taken in order of
    their face-to-face distance; an edge whose clusters have grown since is re-priced and, while
    still under the threshold, queued again (average linkage never merges below an earlier
    merge, so the order stays right). Memory: the edges as numpy arrays (12 bytes each), the
    N x D sums, and at most one queued entry per pair of clusters as they are now.
    """
    sums = np.array(embeddings, dtype=np.float64)  # becomes each root's sum of member vectors
    n = len(sums)
    sq = np.einsum("ij,ij->i", sums, sums).tolist()  # each root's sum of |v|^2
    parent = list(range(n))
    size = [1] * n
    version = [0] * n
    counter = 0

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def distance(a: int, b: int) -> float:
        # mean |u - v|^2 over A x B = (|B| sum|u|^2 + |A| sum|v|^2 - 2 sumA . sumB) / (|A| |B|)
        na, nb = size[a], size[b]
        return (nb * sq[a] + na * sq[b] - 2.0 * float(sums[a] @ sums[b])) / (na * nb)

    rows, cols, dists = _undirected_edges(graph, threshold)
    queued: set[tuple[int, int, int, int]] = set()  # (a, b, versions) waiting in `requeued`
    requeued: list[tuple[float, int, int, int, int]] = []

    def requeue(a: int, b: int) -> None:
        if a > b:
            a, b = b, a
        key = (a, b, version[a], version[b])
        if key in queued:  # the same two clusters, unchanged, are queued already
            return
        d = distance(a, b)
        if d <= threshold:
            queued.add(key)
            heapq.heappush(requeued, (d, *key))

    stream = _edge_stream(rows, cols, dists)
    upcoming = next(stream, None)
    while upcoming is not None or requeued:
        if requeued and (upcoming is None or requeued[0][0] <= upcoming[0]):
            d, a, b, va, vb = heapq.heappop(requeued)
            queued.discard((a, b, va, vb))
            if version[a] != va or version[b] != vb or parent[a] != a or parent[b] != b:
                a, b = find(a), find(b)
                if a != b:
                    requeue(a, b)
                continue
        else:
            d, a, b = upcoming
            upcoming = next(stream, None)
            a, b = find(a), find(b)
            if a == b:
                continue
            if size[a] > 1 or size[b] > 1:  # no longer the two faces of this edge: re-price
                requeue(a, b)
                continue
        if size[a] < size[b]:
            a, b = b, a
        parent[b] = a
        size[a] += size[b]
        sums[a] += sums[b]
        sq[a] += sq[b]
        counter += 1
        version[a] = counter
    return np.array([find(j) for j in range(n)], dtype=np.int64)


def _undirected_edges(graph: KnnGraph, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's edges under the threshold, each unordered pair once, cheapest first."""
    keep = graph.distances <= threshold
    a, b, d = graph.rows[keep], graph.cols[keep], graph.distances[keep]
    low, high = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    _, first = np.unique(low * graph.count + high, return_index=True)
    order = first[np.argsort(d[first], kind="stable")]
    return low[order].astype(np.int32), high[order].astype(np.int32), d[order]


def _edge_stream(rows: np.ndarray, cols: np.ndarray, dists: np.ndarray, chunk: int = 1 << 15):
    """(distance, a, b) for every edge, as Python numbers a chunk at a time (bounded memory)."""
    for start in range(0, len(rows), chunk):
        yield from zip(dists[start:start + chunk].tolist(), rows[start:start + chunk].tolist(),
                       cols[start:start + chunk].tolist())


def label_clusters(roots: np.ndarray, min_size: int = 2) -> np.ndarray:
    """Number clusters 0, 1, ... from the largest (ties: first face first); -1 = unknown.

    Clusters smaller than `min_size` (by default the faces that matched no one) are unknown.
    """
    roots = np.asarray(roots)
    ids, first, counts = np.unique(roots, return_index=True, return_counts=True)
    big = counts >= min_size
    ranked = sorted(zip(-counts[big], first[big], ids[big]))
    number = {int(root): rank for rank, (_, _, root) in enumerate(ranked)}
    return np.array([number.get(int(r), -1) for r in roots], dtype=np.int64)


def cluster_embeddings(embeddings: np.ndarray, threshold: float, k: int = DEFAULT_K,
                       min_size: int = 2, block_bytes: int = BLOCK_BYTES,
                       on_block: Callable[[int], None] | None = None) -> np.ndarray:
    """Cluster number per face (0 = the largest cluster), -1 for faces in no cluster."""
    if not np.isfinite(threshold) or threshold <= 0:
        raise UsageError(f"The clustering threshold must be a positive squared distance, not {threshold}.")
    graph = knn_graph(embeddings, k=k, max_distance=threshold, block_bytes=block_bytes, on_block=on_block)
    return label_clusters(average_linkage(embeddings, graph, threshold), min_size)


# ---------------------------------------------------------------------- measuring

@dataclass(frozen=True)
class PairwiseScore:
    precision: float
    recall: float
    f: float
    clusters: int
    unknown: int


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def pairwise_f(truth: Sequence, predicted: np.ndarray) -> PairwiseScore:
    """Pairwise precision, recall and F of a clustering against the true people.

    A pair of faces counts as predicted "same" when both are in one cluster; unknown faces
    (-1) pair with no one. Computed from the cluster x person contingency counts, not pairs.
    """
    truth_ids = np.unique(np.asarray(truth), return_inverse=True)[1].ravel()
    predicted = np.asarray(predicted)
    true_pairs = _pairs(np.bincount(truth_ids))
    known = predicted >= 0
    predicted_pairs = _pairs(np.bincount(predicted[known])) if known.any() else 0
    cells = predicted[known].astype(np.int64) * (truth_ids.max() + 1) + truth_ids[known]
    hits = _pairs(np.unique(cells, return_counts=True)[1]) if known.any() else 0
    precision = hits / predicted_pairs if predicted_pairs else 1.0
    recall = hits / true_pairs if true_pairs else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairwiseScore(precision, recall, f, int(predicted.max() + 1) if known.any() else 0,
                         int((~known).sum()))


def f_curve(embeddings: np.ndarray, truth: Sequence, thresholds: Sequence[float],
            k: int = DEFAULT_K) -> list[dict]:
    """Pairwise F at each threshold; the kNN graph is built once, at the largest threshold."""
    graph = knn_graph(embeddings, k=k, max_distance=float(max(thresholds)))
    curve = []
    for t in thresholds:
        labels = label_clusters(average_linkage(embeddings, graph, float(t)))
        s = pairwise_f(truth, labels)
        curve.append({"threshold": round(float(t), 4), "precision": round(s.precision, 4),
                      "recall": round(s.recall, 4), "f": round(s.f, 4), "clusters": s.clusters,
                      "unknown": s.unknown})
    return curve


# ---------------------------------------------------------------------- the threshold

def calibrated_threshold(record: dict | None) -> tuple[float, str]:
    """The clustering threshold of the model that made the embeddings, and where it came from.

    The catalogue's current record wins over the copy frozen into a reps folder's meta.json
    (which may predate the calibration); a checkpoint's own record is used as it is.
    """
    from ..models.catalogue import CATALOGUE

    record = record or {}
    name = record.get("name")
    points = (CATALOGUE[name].operating_points if name in CATALOGUE
              else record.get("operating_points") or {}).get("cluster") or {}
    if "threshold" not in points:
        who = f"model {name}" if name else "these embeddings (no model record in meta.json)"
        raise UsageError(f"There is no calibrated clustering threshold for {who}; pass --threshold "
                         "(a squared L2 distance, e.g. half the model's pair threshold).")
    return float(points["threshold"]), f"{name} operating point ({points.get('chosen_on', 'calibrated')})"


# ---------------------------------------------------------------------- the job

@dataclass
class Face:
    path: str  # the photo (or crop) the face comes from
    face: int  # its index among that photo's faces
    crop: str  # the aligned crop, for thumbnails and links


@dataclass
class ClusterReport:
    out_dir: Path
    source: str  # "reps", "aligned" or "photos"
    threshold: float
    threshold_source: str
    k: int
    faces: list[Face]
    labels: np.ndarray  # cluster number per face, -1 = unknown
    seconds: float
    cluster_seconds: float  # the kNN graph and the linkage only
    files: dict[str, str] = field(default_factory=dict)
    # Photos input: every file's outcome (aligned, no-face, unreadable...); counts add up to the files.
    photo_outcomes: dict[str, int] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    links_missing: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        known = self.labels[self.labels >= 0]
        return np.bincount(known).tolist() if len(known) else []

    @property
    def unknown(self) -> int:
        return int((self.labels < 0).sum())

    def to_dict(self) -> dict:
        return {
            "source": self.source, "faces": len(self.faces), "clusters": len(self.sizes),
            "sizes": self.sizes, "unknown": self.unknown, "threshold": self.threshold,
            "threshold_source": self.threshold_source, "k": self.k,
            "seconds": round(self.seconds, 3), "cluster_seconds": round(self.cluster_seconds, 3),
            "photos": self.photo_outcomes or None, "no_face": self.no_face,
            "links_missing": self.links_missing, "out": str(self.out_dir), "files": self.files,
        }


def cluster_name(label: int) -> str:
    return UNKNOWN if label < 0 else f"cluster-{label + 1:04d}"


def _stage(on_stage, name: str, total: int | None) -> None:
    if on_stage:
        on_stage(name, total)


def cluster_faces(source: str | os.PathLike, out: str | os.PathLike, *, threshold: float | None = None,
                  k: int = DEFAULT_K, link: str | None = None, sheet: bool = True,
                  sheet_rows: int = 20, sheet_columns: int = 12,
                  model: str = "dlib-resnet.v1", device: str = "auto", flip: bool = True,
                  batch_size: int = 32, detector: str = "hog", upsample: str | int = "auto",
                  faces: str = "all", fallback: str = "none", workers: int = 1,
                  on_stage: Callable[[str, int | None], None] | None = None,
                  on_advance: Callable[[int], None] | None = None) -> ClusterReport:
    """Group the faces of SOURCE by person into OUT (clusters.csv, summary, sheet, links).

    SOURCE is a `facenet represent` output (labels.csv), an aligned folder (align-spec.json;
    embedded into OUT/reps) or a folder of photos (every face aligned into OUT/aligned with
    `detector`/`upsample`/`faces`/`fallback`, then embedded into OUT/reps with `model`).
    `threshold` (squared L2) overrides the model's calibrated clustering threshold.
    `link` ("symlink" or "hardlink") also makes OUT/links/<cluster>/ folders of the crops.
    """
    started = time.perf_counter()
    source, out = Path(source), Path(out)
    if link is not None and link not in LINK_MODES:
        raise UsageError(f"--link must be one of {', '.join(LINK_MODES)}, not {link!r}.")
    if k < 1:
        raise UsageError(f"--k must be at least 1, not {k}.")
    if sheet_rows < 1 or sheet_columns < 1:
        raise UsageError("--sheet-rows and --sheet-columns must be at least 1.")
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise UsageError(f"--threshold must be a positive squared distance, not {threshold}.")
    if not source.is_dir():
        raise UsageError(f"{source} is not a folder; give a folder of photos or a `facenet represent` output.")
    if not any(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")):
        raise UsageError(f"{source} holds no files; give a folder of photos or a `facenet represent` output.")
    if link is not None and (out / LINKS_DIR).exists():
        raise UsageError(f"{out / LINKS_DIR} already exists (it may hold folders you renamed); move it away "
                         "or choose another OUT.")

    report_extra: dict = {}
    if (source / "labels.csv").is_file():
        kind, found, embeddings, record = "reps", *_faces_from_reps(source)
    else:
        kind = "photos" if not (source / "align-spec.json").is_file() else "aligned"
        found, embeddings, record = _faces_from_images(
            source, out, kind, model=model, device=device, flip=flip, batch_size=batch_size,
            detector=detector, upsample=upsample, faces=faces, fallback=fallback, workers=workers,
            on_stage=on_stage, on_advance=on_advance, extra=report_extra)
    if len(found) < 2:
        raise DataError(f"{source} holds only {len(found)} face; clustering needs at least two.")
    if threshold is not None:
        chosen, chosen_from = float(threshold), "--threshold"
    else:
        chosen, chosen_from = calibrated_threshold(record)

    clustering_started = time.perf_counter()
    _stage(on_stage, "Neighbours", len(found))
    graph = knn_graph(embeddings, k=k, max_distance=chosen, on_block=on_advance)
    _stage(on_stage, "Linking", None)
    labels = label_clusters(average_linkage(embeddings, graph, chosen))
    cluster_seconds = time.perf_counter() - clustering_started

    report = ClusterReport(out, kind, chosen, chosen_from, k, found, labels, 0.0, cluster_seconds,
                           photo_outcomes=report_extra.get("outcomes", {}),
                           no_face=report_extra.get("no_face", []))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, out) from None
    write_clusters_csv(out / CLUSTERS_FILE, found, labels)
    report.files["clusters"] = str(out / CLUSTERS_FILE)
    if sheet:
        _stage(on_stage, "Contact sheet", None)
        write_contact_sheet(out / SHEET_FILE, found, labels, rows=sheet_rows, columns=sheet_columns)
        report.files["contact_sheet"] = str(out / SHEET_FILE)
    if link is not None:
        report.links_missing = link_clusters(out / LINKS_DIR, found, labels, mode=link)
        report.files["links"] = str(out / LINKS_DIR)
    report.files["summary"] = str(out / SUMMARY_FILE)
    report.seconds = time.perf_counter() - started
    write_json_atomic(out / SUMMARY_FILE, report.to_dict())
    return report


def _faces_from_reps(folder: Path) -> tuple[list[Face], np.ndarray, dict]:
    from ..formats.reps import read_reps

    reps = read_reps(folder)
    faces = [Face(path, 0, path) for path in reps.paths]
    return faces, reps.embeddings, reps.meta.get("model") or {}


def _faces_from_images(source: Path, out: Path, kind: str, *, model, device, flip, batch_size, detector,
                       upsample, faces, fallback, workers, on_stage, on_advance, extra: dict):
    """Align (photos only) and embed with the library's own jobs; each face keeps its photo."""
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions
    from ..formats.reps import read_reps
    from ..pipeline.represent import represent_tree

    # verify=False: the align job checks the detection files, the embedder its weights.
    pipeline = FacePipeline.build(PipelineOptions(model=model, device=device, flip=flip, batch_size=batch_size,
                                                  detector=detector, upsample=upsample, faces=faces,
                                                  fallback=fallback), verify=False)
    aligned = source
    crops: dict[str, tuple[str, int]] = {}  # aligned crop (relative) -> (photo, face index)
    if kind == "photos":
        from ..align.job import align_tree

        aligned = out / "aligned"
        job = pipeline.align_job()
        report = align_tree(source, aligned, job, workers=workers,
                            on_start=lambda n: _stage(on_stage, "Aligning", n),
                            on_outcome=(lambda _o: on_advance(1)) if on_advance else None)
        extra["outcomes"] = {s: n for s, n in Counter(o.status for o in report.outcomes).items()}
        # Photos are named by their path relative to SOURCE (align's `input`), never by file name.
        extra["no_face"] = [o.input for o in report.outcomes if not o.outputs]
        for outcome in report.outcomes:
            for index, crop in enumerate(outcome.outputs):
                crops[crop] = (outcome.input, index)
        if not crops:
            raise DataError(f"No face was found in any of the {report.total} files under {source} "
                            f"(see {aligned / 'align-report.csv'}); nothing to cluster.")
    embedder = pipeline.embedder
    reps_dir = out / "reps"
    represent_tree(aligned, reps_dir, embedder, on_start=lambda n: _stage(on_stage, "Embedding", n),
                   on_batch=on_advance)
    reps = read_reps(reps_dir)
    found, rows = [], []
    for row, path in enumerate(reps.paths):
        rel = Path(path).relative_to(aligned).as_posix()
        if kind == "photos":
            if rel not in crops:  # a crop left in OUT/aligned by an earlier run of other photos
                continue
            photo, index = crops[rel]
            found.append(Face(photo, index, path))
        else:
            found.append(Face(rel, 0, path))  # an aligned SOURCE: the crop relative to it
        rows.append(row)
    return found, reps.embeddings[rows], pipeline.record.to_dict()


# ---------------------------------------------------------------------- outputs

def write_clusters_csv(path: Path, faces: Sequence[Face], labels: np.ndarray) -> None:
    """clusters.csv: path, face, cluster (cluster-0001 is the largest; `unknown` for loners), crop."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "face", "cluster", "crop"])
    for face, label in zip(faces, labels):
        writer.writerow([face.path, face.face, cluster_name(int(label)), face.crop])
    write_text_atomic(path, buf.getvalue())


def read_clusters_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a clusters.csv as dicts (path, face, cluster, crop)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"Cannot read {path} ({exc.strerror}).") from None
    if rows and not {"path", "face", "cluster"} <= set(rows[0]):
        raise DataError(f"{path} is not a clusters.csv (path, face, cluster); rerun `facenet cluster`.")
    return rows


def _link_name(face: Face, taken: set[str]) -> str:
    parts = PurePath(face.crop.replace("\\", "/")).parts[-2:]
    base = "__".join(parts)
    stem, suffix = os.path.splitext(base)
    name, n = base, 1
    while name in taken:
        name, n = f"{stem}-{n}{suffix}", n + 1
    taken.add(name)
    return name


def link_clusters(folder: Path, faces: Sequence[Face], labels: np.ndarray, mode: str = "symlink") -> list[str]:
    """OUT/links/cluster-0001/..., unknown/: a link per face crop. Returns crops not found.

    Built in a temporary folder and renamed into place, so a killed run leaves no half set.
    Rename a folder to the person's name and `facenet gallery add GALLERY OUT/links/` enrols it.
    """
    tmp = temp_path(folder)
    missing: list[str] = []
    taken: dict[int, set[str]] = {}
    try:
        for face, label in zip(faces, labels):
            target = Path(face.crop).resolve()
            if not target.is_file():
                missing.append(face.crop)
                continue
            group = tmp / cluster_name(int(label))
            group.mkdir(parents=True, exist_ok=True)
            dest = group / _link_name(face, taken.setdefault(int(label), set()))
            if mode == "symlink":
                os.symlink(target, dest)
            else:
                os.link(target, dest)
        tmp.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if mode == "hardlink" and getattr(exc, "errno", None) == 18:  # EXDEV
            raise UsageError(f"Cannot hard-link across filesystems into {folder}; use --link symlink.") from None
        raise write_error(exc, folder) from None
    return missing


def write_contact_sheet(path: Path, faces: Sequence[Face], labels: np.ndarray, rows: int = 20,
                        columns: int = 12, thumb: int = 64) -> None:
    """A PNG with one row of thumbnails per cluster, largest first (at most `rows` rows and
    `columns` faces a row), then one row of unknown faces; people would rather look than read."""
    from PIL import Image, ImageDraw

    labels = np.asarray(labels)
    count = int(labels.max() + 1) if (labels >= 0).any() else 0
    shown = list(range(min(rows, count)))
    if (labels < 0).any():
        shown.append(-1)
    label_width, gap = 150, 4
    longest = max([int((labels == label).sum()) for label in shown] or [1])
    width = label_width + min(columns, longest) * (thumb + gap) + gap
    height = max(1, len(shown)) * (thumb + gap) + gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if not shown:
        draw.text((gap, gap), "no faces", fill="black")
    sizes = np.bincount(labels[labels >= 0]) if count else np.zeros(0, dtype=int)
    for row, label in enumerate(shown):
        members = np.flatnonzero(labels == label)
        y = gap + row * (thumb + gap)
        total = int(sizes[label]) if label >= 0 else len(members)
        draw.text((gap, y + thumb // 2 - 12), f"{cluster_name(label)}\n{total} face{'s' * (total != 1)}",
                  fill="black")
        for column, index in enumerate(members[:columns]):
            x = label_width + gap + column * (thumb + gap)
            sheet.paste(_thumbnail(faces[index].crop, thumb), (x, y))
    with atomic_open(path, "wb") as fh:
        sheet.save(fh, format="PNG")


def _thumbnail(path: str, size: int):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB").resize((size, size), Image.BILINEAR)
    except (OSError, ValueError):
        return Image.new("RGB", (size, size), (200, 200, 200))  # a missing crop: a grey tile
