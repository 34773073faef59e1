"""Losses: FaceNet's triplet loss and an embedding-distillation term."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import MeanReducer

from .miners import DEFAULT_MARGIN, squared_l2


def triplet_loss(margin: float = DEFAULT_MARGIN) -> TripletMarginLoss:
    """FaceNet's loss: mean over the given triplets of max(0, d(a,p) - d(a,n) + alpha).

    d is squared L2 on normalised embeddings. pml's default reducer (AvgNonZeroReducer)
    would average over the violating triplets only, so the plain mean is asked for. Call it
    as loss(embeddings, labels, indices_tuple=miner(embeddings, labels)); with no triplets
    the loss is 0 (and still connected to the graph).
    """
    return TripletMarginLoss(margin=margin, distance=squared_l2(), reducer=MeanReducer(),
                             swap=False, smooth_loss=False)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      center: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Mean of 1 - cos(student, normalise(teacher - center)); the teacher gets no gradient.

    `center` is the teacher record's centre (see ModelRecord.center): a teacher whose raw
    vectors crowd into a small cap of the sphere is spread out before the student copies it.
    """
    target = teacher.detach()
    if center is not None:
        target = target - torch.as_tensor(center, dtype=target.dtype, device=target.device)
    target = F.normalize(target, p=2, dim=1)
    return (1.0 - F.cosine_similarity(student, target, dim=1)).mean()
