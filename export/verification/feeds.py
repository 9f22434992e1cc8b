"""Input batches for any tensor signature, and the outputs they give, in the one-array form verification uses.

Verification slices, concatenates and counts input batches (``x[i:j]``, ``np.concatenate``, ``len(x)``) and
compares outputs element by element. So that every check works unchanged whatever the model takes:

- one input: the batch is that input's array, of its own dtype (float32 NCHW images, uint8 NHWC images, ...);
- several inputs: one numpy *structured* array with a field per input (``x["ids"]`` is that input's batch);
  slicing and concatenating it keeps every input's rows together;
- outputs: one output is returned as it is; several are flattened per sample and joined along axis 1 in graph
  order, ``(N, sum of each output's size per sample)``, so the first output's columns come first (a classifier
  output first keeps its ``(N, classes)`` columns at ``[:, :classes]``).

Random inputs are generated per datatype: standard normal floats, integers in [0, 10) (small enough to be
indices or counts), uint8 over its whole range (pixels), random booleans.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contracts.repository import TensorSpec
from export.errors import ExportError

SMALL_INTEGERS = 10  # random integer inputs lie in [0, SMALL_INTEGERS)


def packed_dtype(specs: Sequence[TensorSpec]) -> np.dtype:
    """The structured dtype of a several-input batch: one field per input, of its dtype and per-sample shape."""
    return np.dtype([(s.name, np.dtype(s.dtype), s.dims) for s in specs])


def random_input(spec: TensorSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random samples of one input, generated for its datatype (see the module docstring)."""
    shape = (n, *spec.dims)
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.integers(0, SMALL_INTEGERS, shape).astype(dtype)


def random_batch(specs: Sequence[TensorSpec], n: int, seed: int = 0) -> np.ndarray:
    """``n`` random samples of every input, as one batch (a plain array for one input, else structured)."""
    rng = np.random.default_rng(seed)
    if len(specs) == 1:
        return random_input(specs[0], n, rng)
    return pack({s.name: random_input(s, n, rng) for s in specs}, specs)


def pack(arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> np.ndarray:
    """Per-input arrays (same number of rows) as one structured batch."""
    n = len(next(iter(arrays.values())))
    batch = np.empty(n, dtype=packed_dtype(specs))
    for spec in specs:
        batch[spec.name] = arrays[spec.name]
    return batch


def feed(x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """An ONNX Runtime feed from a batch: each field of a structured batch, or the one array for ``names[0]``."""
    if x.dtype.names:
        return {name: np.ascontiguousarray(x[name]) for name in x.dtype.names}
    return {names[0]: np.ascontiguousarray(x)}


def joined(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Outputs as one array: the single output itself, or every output flattened per sample, side by side."""
    if len(outputs) == 1:
        return np.asarray(outputs[0])
    arrays = [np.asarray(o) for o in outputs]
    rows = len(arrays[0])
    for i, array in enumerate(arrays):
        if array.ndim == 0 or len(array) != rows:
            raise ExportError(
                f"output {i} has shape {array.shape} while output 0 has {rows} rows; every output needs the batch "
                "axis first"
            )
    return np.concatenate([a.reshape(rows, -1) for a in arrays], axis=1)
