"""Kernels that replace ``onnx.reference``'s own in the float64 oracle, where those are wrong or too slow.

Checked against onnx 1.23's reference implementation:

- BatchNormalization: opsets 7 to 13 normalise with momentum-blended batch statistics (``momentum`` always has
  its default, so the inference branch never runs), and ``spatial=0`` is ignored. Ours: inference mode on the
  node's statistics, ``(x - mean) / sqrt(var + eps) * scale + B``, per channel or (spatial=0) per element.
- ConvTranspose with group > 1 slices the weight along axis 0 by OUTPUT channels (axis 0 holds input channels)
  and adds the whole bias to each group; with group 1 it runs a per-channel Python col2im loop.
- Conv is correct but im2col in numpy; MaxPool and AveragePool loop in Python over output positions (3.7 s
  for one 3x3 AveragePool on 2x64x35x35, against 0.09 s here). torch's float64 kernels are the same math,
  much faster. The reference's MaxPool also swaps asymmetric pads between axes: [0, 1, 2, 1] on 9x8 gives 8x9.

Conv and ConvTranspose here run torch's float64 kernels with explicit (possibly asymmetric) padding, following
the ONNX spec's formulas for ``auto_pad``, ``pads``, ``output_padding`` and ``output_shape``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_average_pool import AveragePool_19 as ReferenceAveragePool
from onnx.reference.ops.op_max_pool import MaxPool as ReferenceMaxPool

from export.errors import ExportError


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A zero-copy view; the kernels here never write to their inputs (the reference hands out read-only arrays)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def _ints(value: Any, default: int, n: int) -> list[int]:
    return [int(v) for v in value] if value is not None and len(value) else [default] * n


class BatchNormalization(OpRun):
    """Inference-mode BatchNormalization on the node's population statistics (see the module docstring)."""

    op_domain = ""

    def _run(
        self, x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, **attrs: Any
    ) -> tuple[np.ndarray]:
        if attrs.get("training_mode") == 1:
            raise ExportError("BatchNormalization in training mode has no float64 oracle")
        view = (-1, *([1] * (x.ndim - 2))) if mean.ndim == 1 else mean.shape  # spatial=0: [C, D1, ...]
        eps = attrs.get("epsilon") or 1e-5
        g, b, m, v = (a.reshape(view) for a in (scale, bias, mean, var))
        return ((x - m) / np.sqrt(v + eps) * g + b,)


def _same_pads(total: list[int], upper: bool) -> list[int]:
    """ONNX SAME_UPPER/SAME_LOWER split of each axis's total padding into [begins..., ends...]."""
    head = [t // 2 if upper else t - t // 2 for t in total]
    return head + [t - h for t, h in zip(total, head, strict=True)]


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, ..., e1, e2, ...] -> F.pad's (b_last, e_last, ..., b1, e1)."""
    n = len(pads) // 2
    return [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])]


def _window_pads(
    sizes: tuple[int, ...], kernel: list[int], strides: list[int], dilations: list[int], attrs: dict[str, Any]
) -> list[int]:
    """[begins..., ends...] for a sliding window (Conv, MaxPool) from ``pads`` and ``auto_pad``, per the spec."""
    n = len(sizes)
    auto_pad = attrs.get("auto_pad") or "NOTSET"
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return _ints(attrs.get("pads"), 0, 2 * n)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    out = [-(-size // s) for size, s in zip(sizes, strides, strict=True)]
    total = [max(0, (o - 1) * s + k - size) for o, s, k, size in zip(out, strides, span, sizes, strict=True)]
    return _same_pads(total, auto_pad == "SAME_UPPER")


class Conv(OpRun):
    """Conv in float64 with torch's kernel."""

    op_domain = ""

    def _run(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs: Any) -> tuple[np.ndarray]:
        n = x.ndim - 2
        strides, dilations = _ints(attrs.get("strides"), 1, n), _ints(attrs.get("dilations"), 1, n)
        pads = _window_pads(x.shape[2:], list(w.shape[2:]), strides, dilations, attrs)
        xt, padding = _tensor(x), pads[:n]
        if pads[:n] != pads[n:]:  # asymmetric: pad explicitly (zeros), then convolve without padding
            xt, padding = F.pad(xt, _torch_pad(pads)), [0] * n
        bias = _tensor(b) if b is not None else None
        conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
        y = conv(xt, _tensor(w), bias, strides, padding, dilations, int(attrs.get("group") or 1))
        return (y.numpy(),)


class ConvTranspose(OpRun):
    """ConvTranspose in float64 with torch's kernel; padding cropped afterwards as the ONNX spec defines it."""

    op_domain = ""

    def _run(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs: Any) -> tuple[np.ndarray]:
        n = x.ndim - 2
        strides, dilations = _ints(attrs.get("strides"), 1, n), _ints(attrs.get("dilations"), 1, n)
        out_pad = _ints(attrs.get("output_padding"), 0, n)
        pads = _ints(attrs.get("pads"), 0, 2 * n)
        axes = zip(strides, x.shape[2:], out_pad, w.shape[2:], dilations, strict=True)
        full = [s * (i - 1) + op + (k - 1) * d + 1 for s, i, op, k, d in axes]  # output size before cropping
        auto_pad = attrs.get("auto_pad") or "NOTSET"
        wanted = attrs.get("output_shape")
        if wanted is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            wanted = [i * s for i, s in zip(x.shape[2:], strides, strict=True)]
        if wanted is not None and len(wanted):
            total = [f - int(o) for f, o in zip(full, wanted[-n:], strict=True)]
            pads = _same_pads(total, auto_pad == "SAME_UPPER")
        elif auto_pad == "VALID":
            pads = [0] * (2 * n)
        convt = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
        xt, wt = _tensor(x), _tensor(w)
        y = convt(xt, wt, None, strides, 0, 0, int(attrs.get("group") or 1), dilations)
        y = F.pad(y, _torch_pad([0] * n + out_pad))  # output_padding: extra positions at the end of each axis
        crop = tuple(slice(pads[i], full[i] - pads[i + n]) for i in range(n))
        y = y[(slice(None), slice(None), *crop)]
        if b is not None:
            y = y + _tensor(b).reshape(-1, *([1] * n))
        return (y.numpy(),)


class MaxPool(ReferenceMaxPool):
    """MaxPool with torch's kernel (pads from ``pads``/``auto_pad``, asymmetric ones as -inf); with the Indices
    output, the reference's own (a Python loop over output positions)."""

    op_domain = ""

    def _run(self, x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        n = x.ndim - 2
        if len(self.onnx_node.output) > 1:  # the Indices output: the reference's own
            return super()._run(x, **attrs)
        kernel = [int(k) for k in attrs["kernel_shape"]]
        strides, dilations = _ints(attrs.get("strides"), 1, n), _ints(attrs.get("dilations"), 1, n)
        pads = _window_pads(x.shape[2:], kernel, strides, dilations, attrs)
        xt, padding = _tensor(x), pads[:n]
        if pads[:n] != pads[n:] or any(2 * p > k for p, k in zip(pads, kernel, strict=False)):
            xt, padding = F.pad(xt, _torch_pad(pads), value=-np.inf), [0] * n  # padded positions never win
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
        y = pool(xt, kernel, strides, padding, dilations, ceil_mode=bool(attrs.get("ceil_mode")))
        return (y.numpy(),)


class AveragePool(ReferenceAveragePool):
    """AveragePool with torch's kernel for ceil_mode=0 and no dilation (otherwise the reference's own): the input
    is zero-padded explicitly, and with count_include_pad=0 the window sums are divided by the window's count of
    real (unpadded) positions."""

    op_domain = ""

    def _run(self, x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        n = x.ndim - 2
        kernel = [int(k) for k in attrs["kernel_shape"]]
        dilations = _ints(attrs.get("dilations"), 1, n)
        if attrs.get("ceil_mode") or any(d != 1 for d in dilations):
            return super()._run(x, **attrs)
        strides = _ints(attrs.get("strides"), 1, n)
        pads = _torch_pad(_window_pads(x.shape[2:], kernel, strides, dilations, attrs))
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        y = pool(F.pad(_tensor(x), pads), kernel, strides)
        if not attrs.get("count_include_pad"):
            y = y / pool(F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=y.dtype), pads), kernel, strides)
        return (y.numpy(),)


ORACLE_OPS: list[type[OpRun]] = [BatchNormalization, Conv, ConvTranspose, MaxPool, AveragePool]
