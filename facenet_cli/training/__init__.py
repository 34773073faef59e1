"""Parts for training embedding networks: triplet miners, losses, P x K batch sampling."""
from .losses import distillation_loss, triplet_loss
from .miners import MINERS, OpenFaceTripletMiner, batch_hard_miner, make_miner, semihard_miner, squared_l2
from .samplers import PKBatchSampler

__all__ = [
    "MINERS", "OpenFaceTripletMiner", "PKBatchSampler", "batch_hard_miner", "distillation_loss",
    "make_miner", "semihard_miner", "squared_l2", "triplet_loss",
]
