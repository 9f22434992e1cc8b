"""Batch-size buckets: each batch is padded up to one of a few sizes, so the runtime sees a bounded set of shapes.

cuDNN chooses (with EXHAUSTIVE search: measures) its convolution algorithms on the first run of every new
input shape, so on CUDA the first request at each batch size is slow. With buckets (1, 2, 4, ..., max) a
batch of n rows runs as the smallest bucket b >= n: rows n..b-1 are zeros, and the first n rows of the
output are the answer. Warm-up runs each bucket once before the model is ready, so no request pays for a
new shape.

Precondition: the graph is batch-invariant (each output row depends only on its own input row), which
every folded bnfold graph is: with BatchNorm folded into constant weights nothing mixes rows, so padding
cannot change any answer. On the CPU, padding is pure extra work, so buckets are off by default there.

The setting (``BNFOLD_BATCH_BUCKETS``): ``auto`` (powers of two up to max_batch_size on CUDA, off on the
CPU), ``off``, or an explicit list such as ``1,2,4,8,16,32,64``, which must reach max_batch_size.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import numpy as np

AUTO, OFF = "auto", "off"


class BucketError(ValueError):
    """A bucket list that cannot serve the model's batches; the server must not start with it."""


def parse_buckets(value: str) -> str | tuple[int, ...]:
    """``auto``, ``off`` or a sorted tuple of distinct sizes >= 1 from a comma-separated list."""
    text = value.strip().lower()
    if text in (AUTO, OFF):
        return text
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise BucketError(
            f"batch buckets {value!r}: expected auto, off or comma-separated batch sizes like 1,2,4,8"
        ) from None
    if not sizes or min(sizes) < 1:
        raise BucketError(f"batch buckets {value!r}: every size must be a whole number >= 1")
    return tuple(sorted(set(sizes)))


def powers_of_two(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return (*sizes, max_batch_size)


def resolve_buckets(setting: str, on_cuda: bool, max_batch_size: int) -> tuple[int, ...]:
    """The buckets for a model (empty: off); an explicit list must reach ``max_batch_size``."""
    parsed = parse_buckets(setting)
    if isinstance(parsed, str):
        return powers_of_two(max_batch_size) if parsed == AUTO and on_cuda else ()
    if parsed[-1] < max_batch_size:
        raise BucketError(
            f"batch buckets {','.join(map(str, parsed))} stop at {parsed[-1]}, below max_batch_size "
            f"{max_batch_size}: add {max_batch_size} (or a larger size) to BNFOLD_BATCH_BUCKETS"
        )
    return parsed


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding ``n`` rows (``n`` itself when it is beyond the largest)."""
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else n


def run_padded(
    run: Callable[[tuple[np.ndarray, ...]], list[np.ndarray]], batch: tuple[np.ndarray, ...], buckets: tuple[int, ...]
) -> list[np.ndarray]:
    """``run`` on ``batch`` (one array per input) with every input padded with zero rows up to its bucket; the
    rows of ``batch`` only, of every output."""
    n = len(batch[0])
    size = bucket_for(n, buckets)
    if size == n:
        return run(batch)
    padded = []
    for x in batch:
        rows = np.zeros((size, *x.shape[1:]), x.dtype)  # (bucket, *sample_shape)
        rows[:n] = x
        padded.append(rows)
    return [out[:n] for out in run(tuple(padded))]
