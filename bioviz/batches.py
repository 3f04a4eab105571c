"""Deterministic batching of a map-style dataset, shared by extraction, model evaluation and
the benchmarks: the same item always lands in the same batch, so a resumed run (or a second
pass with an SAE spliced in) sees exactly the batches of the first."""

from __future__ import annotations

import math

import torch


class FixedBatches(torch.utils.data.Sampler):
    """Batch ``b`` is always items ``[b*size, (b+1)*size)``; iteration starts at batch ``start``.

    Examples
    --------
    >>> list(FixedBatches(5, 2))
    [[0, 1], [2, 3], [4]]
    >>> list(FixedBatches(5, 2, start=1))
    [[2, 3], [4]]
    """

    def __init__(self, n_items: int, batch_size: int, start: int = 0):
        self.n, self.size, self.start = n_items, batch_size, start

    def __len__(self):
        return max(0, math.ceil(self.n / self.size) - self.start)

    def __iter__(self):
        for b in range(self.start, math.ceil(self.n / self.size)):
            yield list(range(b * self.size, min((b + 1) * self.size, self.n)))
