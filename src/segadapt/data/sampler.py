"""The order in which training visits a dataset: endless, seeded by epoch, resumable, shardable over processes.

One shuffled order per epoch (permutation(seed + epoch)), so a run resumed at step k visits exactly the
samples the uninterrupted run would have, and N processes under torchrun together visit the one-process order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Endless shuffled indices; epoch e uses permutation(seed + e), so a resumed run sees the same order.

    `start` is a position in that global order. With `world` > 1 processes the order is dealt out like
    cards: rank r takes positions start + r, start + r + world, ... So the shards are disjoint, together
    they are exactly the single-process order, and b consecutive items on each of the ranks make up the
    same global batch of b * world samples that one process would take at that step.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        if start % world:
            raise ValueError(f"start {start} must be a multiple of world {world} (whole global batches)")
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def _global_order(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.n)
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            yield from torch.randperm(self.n, generator=g)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        order = self._global_order()
        return order if self.world == 1 else itertools.islice(order, self.rank, None, self.world)


def batches(sampler: Iterable[int], size: int) -> Iterator[list[int]]:
    """The sampler's indices grouped as the DataLoader groups them: which samples each batch holds.

    EpochSampler is deterministic, so iterating it a second time beside the loader names every batch's
    samples without changing the dataset's items (used to name a batch that makes the loss non-finite).
    """
    it = iter(sampler)
    while batch := list(itertools.islice(it, size)):
        yield batch


