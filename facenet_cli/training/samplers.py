"""P x K batches: `people_per_batch` people, `images_per_person` distinct images of each.

pml's MPerClassSampler draws from the global RNG (no seed of its own) and repeats images of a
person who has fewer than K, so a small sampler of our own gives exact, reproducible batches.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import torch

from ..errors import UsageError


class PKBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler (for DataLoader(batch_sampler=...)) of P x K dataset indices.

    Only people with at least K images take part. Each epoch shuffles them and walks through
    them P at a time (a new shuffle when they run out; a person due twice in one batch waits
    for the next), so people recur evenly and a batch never holds a person twice. The order
    depends only on `seed` and the epoch (`set_epoch`).
    Batches are laid out person by person: K indices of the first person, then the next.
    """

    def __init__(self, labels: Sequence[int], people_per_batch: int, images_per_person: int,
                 seed: int = 0, batches_per_epoch: int | None = None):
        if people_per_batch < 2:
            raise UsageError(
                f"--people-per-batch must be at least 2 to have negatives, not {people_per_batch}.")
        if images_per_person < 2:
            raise UsageError(
                f"--images-per-person must be at least 2 to have positives, not {images_per_person}.")
        by_person: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_person[int(label)].append(index)
        self.images = {p: idx for p, idx in sorted(by_person.items()) if len(idx) >= images_per_person}
        self.people = list(self.images)
        if len(self.people) < people_per_batch:
            raise UsageError(
                f"Only {len(self.people)} people have {images_per_person} or more images, fewer than "
                f"--people-per-batch {people_per_batch}; lower either or add data."
            )
        self.people_per_batch = people_per_batch
        self.images_per_person = images_per_person
        self.seed = seed
        self.epoch = 0
        self.batches_per_epoch = batches_per_epoch or len(self.people) // people_per_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        queue: list[int] = []  # people in visiting order, one shuffled round after another
        for _ in range(self.batches_per_epoch):
            chosen: list[int] = []
            position = 0
            while len(chosen) < self.people_per_batch:
                if position == len(queue):
                    queue += [self.people[i] for i in torch.randperm(len(self.people), generator=g)]
                person = queue[position]
                if person in chosen:
                    position += 1  # at a round boundary: leave them for the next batch
                else:
                    chosen.append(queue.pop(position))
            batch: list[int] = []
            for person in chosen:
                images = self.images[person]
                pick = torch.randperm(len(images), generator=g)[:self.images_per_person]
                batch += [images[i] for i in pick]
            yield batch
