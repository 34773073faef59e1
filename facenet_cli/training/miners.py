"""Triplet miners: (embeddings, labels) -> (anchor, positive, negative) index tensors.

All work on squared L2 distance between L2-normalised embeddings, FaceNet's d(x, y) =
||f(x) - f(y)||^2 (pytorch-metric-learning's LpDistance(power=2) normalises, takes the L2
distance, then squares it). Every miner is a pytorch-metric-learning miner, so its output can
be passed as `indices_tuple` to a pml loss, and each runs under torch.no_grad.

- "openface": OpenFace's rule. For every anchor-positive pair of a person (anchor earlier in
  the batch than the positive), one negative drawn at random among those with
  d(a,n) - d(a,p) < alpha; pairs with no such negative are skipped. Hard negatives count too.
- "semihard": FaceNet's semi-hard triplets, every (a, p, n) with d(a,p) < d(a,n) and
  d(a,n) - d(a,p) <= alpha (pml's TripletMarginMiner; its margin bound is inclusive).
- "batch-hard": per anchor, its farthest positive and nearest negative (pml's BatchHardMiner).
"""
from __future__ import annotations

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.miners import BaseMiner, BatchHardMiner, TripletMarginMiner

from ..errors import UsageError

DEFAULT_MARGIN = 0.2  # FaceNet's and OpenFace's alpha


def squared_l2() -> LpDistance:
    return LpDistance(p=2, power=2, normalize_embeddings=True)


class OpenFaceTripletMiner(BaseMiner):
    """OpenFace's triplet selection; random choices come from `generator` (reproducible)."""

    def __init__(self, margin: float = DEFAULT_MARGIN, generator: torch.Generator | None = None,
                 **kwargs):
        kwargs.setdefault("distance", squared_l2())
        super().__init__(**kwargs)
        self.margin = margin
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        if ref_emb is not embeddings:
            # "anchor before positive" only means something within one batch.
            raise ValueError("OpenFaceTripletMiner mines within one batch; do not pass ref_emb")
        dist = self.distance(embeddings, embeddings)
        n = len(labels)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        anchor_before_positive = torch.ones(n, n, dtype=torch.bool, device=same.device).triu(1)
        anchors, positives = torch.nonzero(same & anchor_before_positive, as_tuple=True)
        if len(anchors) == 0:
            empty = anchors.new_empty(0)
            return empty, empty.clone(), empty.clone()
        ap = dist[anchors, positives]
        # (pairs, batch): which images may serve as the negative of each pair.
        allowed = ~same[anchors] & (dist[anchors] - ap.unsqueeze(1) < self.margin)
        # A uniform draw among the allowed ones: the allowed column with the largest random key.
        keys = torch.rand(allowed.shape, generator=self.generator).to(allowed.device)
        keys = torch.where(allowed, keys, torch.full_like(keys, -1.0))
        negatives = keys.argmax(dim=1)
        keep = allowed.any(dim=1)
        return anchors[keep], positives[keep], negatives[keep]


def semihard_miner(margin: float = DEFAULT_MARGIN) -> TripletMarginMiner:
    return TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=squared_l2())


def batch_hard_miner() -> BatchHardMiner:
    return BatchHardMiner(distance=squared_l2())


MINERS = ("openface", "semihard", "batch-hard")


def make_miner(name: str, margin: float = DEFAULT_MARGIN, seed: int = 0) -> BaseMiner:
    """A miner by name (for the CLI): one of MINERS."""
    if name == "openface":
        return OpenFaceTripletMiner(margin, torch.Generator().manual_seed(seed))
    if name == "semihard":
        return semihard_miner(margin)
    if name == "batch-hard":
        return batch_hard_miner()
    raise UsageError(f"Unknown miner {name!r}; choose one of {', '.join(MINERS)}.")
