"""Mini-batch iteration over in-memory tensors, with an order that depends only on (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample order of ``epoch``: a pure function of (n, seed, epoch), so resume can replay it."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    order: torch.Tensor | None = None,
    drop_last: bool = False,
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) mini-batches in ``order`` (default: as stored), skipping the first ``start`` batches."""
    idx = order if order is not None else torch.arange(x.shape[0])
    n = idx.shape[0]  # an order may cover only part of x (this process's shard)
    stop = n - n % batch_size if drop_last else n
    for begin in range(start * batch_size, stop, batch_size):
        sel = idx[begin : begin + batch_size]
        yield x[sel], y[sel]


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """How many mini-batches one epoch of ``n`` samples has."""
    return n // batch_size if drop_last else -(-n // batch_size)
