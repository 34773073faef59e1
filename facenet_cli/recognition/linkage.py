"""The clustering engine of `facenet cluster`: faces to groups by average linkage over a kNN graph.

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
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import UsageError

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
