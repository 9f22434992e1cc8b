"""Kernels that replace ``onnx.reference``'s own in the float64 oracle, where those are wrong or too slow.

Checked against onnx 1.23's reference implementation:

- BatchNormalization: opsets 7 to 13 normalise with momentum-blended batch statistics (``momentum`` always has
  its default, so the inference branch never runs), and ``spatial=0`` is ignored. Ours: inference mode on the
  node's statistics, ``(x - mean) / sqrt(var + eps) * scale + B``, per channel or (spatial=0) per element.
- ConvTranspose with group > 1 slices the weight along axis 0 by OUTPUT channels (axis 0 holds input channels)
  and adds the whole bias to each group; with group 1 it runs a per-channel Python col2im loop.
- Conv is correct but im2col in numpy; MaxPool and AveragePool loop in Python over output positions (3.7 s
  for one 3x3 AveragePool on 2x64x35x35). The reference's MaxPool also swaps asymmetric pads between axes:
  [0, 1, 2, 1] on 9x8 gives 8x9.

The kernels here are numpy in float64, no torch (``bnfold-export --onnx`` runs without it): the input is padded
explicitly (zeros; -inf for MaxPool), ``sliding_window_view`` gives every window as a strided view, and each
kernel position contributes one tensor contraction (Conv), one strided scatter-add (ConvTranspose) or one
reduction step (pools), following the ONNX spec's formulas for ``auto_pad``, ``pads``, ``output_padding``,
``output_shape`` and ``ceil_mode`` (the last as torch and ONNX Runtime compute it).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_average_pool import AveragePool_19 as ReferenceAveragePool
from onnx.reference.ops.op_max_pool import MaxPool as ReferenceMaxPool

from export.errors import ExportError


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


def _pad(x: np.ndarray, pads: list[int], value: float = 0.0) -> np.ndarray:
    """``x`` padded by ONNX ``pads`` [b1, b2, ..., e1, e2, ...] on its spatial axes, with ``value``."""
    n = len(pads) // 2
    widths = [(0, 0), (0, 0), *((pads[i], pads[i + n]) for i in range(n))]
    return np.pad(x, widths, constant_values=value) if any(pads) else x


def _windows(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int]) -> np.ndarray:
    """Every window of the padded ``x`` as a view: (N, C, out..., k...)."""
    n = len(kernel)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    view = sliding_window_view(x, span, axis=tuple(range(2, 2 + n)))
    return view[
        (slice(None), slice(None), *(slice(None, None, s) for s in strides), *(slice(None, None, d) for d in dilations))
    ]


def _positions(kernel: tuple[int, ...] | list[int]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(k) for k in kernel)))


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
    """Conv in float64: y[n, g, m, o...] = sum over kernel positions p of W[g, m, :, p] . window_p(x)[n, g, :, o...]."""

    op_domain = ""

    def _run(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs: Any) -> tuple[np.ndarray]:
        n, groups = x.ndim - 2, int(attrs.get("group") or 1)
        strides, dilations = _ints(attrs.get("strides"), 1, n), _ints(attrs.get("dilations"), 1, n)
        kernel = list(w.shape[2:])
        pads = _window_pads(x.shape[2:], kernel, strides, dilations, attrs)
        win = _windows(_pad(x, pads), kernel, strides, dilations)
        win = win.reshape(x.shape[0], groups, x.shape[1] // groups, *win.shape[2:])  # (N, G, C/G, out..., k...)
        wg = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])  # (G, M/G, C/G, k...)
        y = np.zeros((x.shape[0], groups, wg.shape[1], *win.shape[3 : 3 + n]), dtype=np.result_type(x, w))
        for p in _positions(kernel):
            at: Any = (Ellipsis, *p)
            y += np.einsum("ngc...,gmc->ngm...", win[at], wg[at])
        y = y.reshape(x.shape[0], w.shape[0], *y.shape[3:])
        return (y + b.reshape(-1, *([1] * n)) if b is not None else y,)


def _convt_pads(x: np.ndarray, full: list[int], strides: list[int], attrs: dict[str, Any]) -> list[int]:
    """ConvTranspose's crop [begins..., ends...] from ``pads``, ``auto_pad`` and ``output_shape``, per the spec."""
    n = x.ndim - 2
    auto_pad = attrs.get("auto_pad") or "NOTSET"
    wanted = attrs.get("output_shape")
    if wanted is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        wanted = [i * s for i, s in zip(x.shape[2:], strides, strict=True)]
    if wanted is not None and len(wanted):
        total = [f - int(o) for f, o in zip(full, wanted[-n:], strict=True)]
        return _same_pads(total, auto_pad == "SAME_UPPER")
    return [0] * (2 * n) if auto_pad == "VALID" else _ints(attrs.get("pads"), 0, 2 * n)


class ConvTranspose(OpRun):
    """ConvTranspose in float64: each kernel position p scatters W[:, :, p]^T x into y at stride s, offset p * d;
    then output_padding (zeros at the end of each axis), the crop of the spec, the bias."""

    op_domain = ""

    def _run(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs: Any) -> tuple[np.ndarray]:
        n, groups = x.ndim - 2, int(attrs.get("group") or 1)
        strides, dilations = _ints(attrs.get("strides"), 1, n), _ints(attrs.get("dilations"), 1, n)
        out_pad = _ints(attrs.get("output_padding"), 0, n)
        axes = zip(strides, x.shape[2:], out_pad, w.shape[2:], dilations, strict=True)
        full = [s * (i - 1) + op + (k - 1) * d + 1 for s, i, op, k, d in axes]  # output size before cropping
        pads = _convt_pads(x, full, strides, attrs)
        xg = x.reshape(x.shape[0], groups, x.shape[1] // groups, *x.shape[2:])  # (N, G, C/G, in...)
        wg = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])  # (G, C/G, M/G, k...)
        y = np.zeros((x.shape[0], groups, w.shape[1], *full), dtype=np.result_type(x, w))
        for p in _positions(w.shape[2:]):
            at = tuple(
                slice(k * d, k * d + s * (i - 1) + 1, s)
                for k, d, s, i in zip(p, dilations, strides, x.shape[2:], strict=True)
            )
            kernel_slice: Any = (Ellipsis, *p)
            y[(slice(None), slice(None), slice(None), *at)] += np.einsum("ngc...,gcm->ngm...", xg, wg[kernel_slice])
        crop = tuple(slice(pads[i], full[i] - pads[i + n]) for i in range(n))
        y = y.reshape(x.shape[0], groups * w.shape[1], *full)[(slice(None), slice(None), *crop)]
        return (y + b.reshape(-1, *([1] * n)) if b is not None else y,)


def _ceil_pads(
    sizes: tuple[int, ...], kernel: list[int], strides: list[int], dilations: list[int], pads: list[int]
) -> list[int]:
    """``pads`` with the extra end padding ceil_mode=1 needs (a last window must start inside input or begin pad)."""
    n, ends = len(sizes), list(pads[len(sizes) :])
    for i in range(n):
        span, total = (kernel[i] - 1) * dilations[i] + 1, sizes[i] + pads[i] + pads[i + n]
        out = -(-(total - span) // strides[i]) + 1
        if (out - 1) * strides[i] >= sizes[i] + pads[i]:
            out -= 1
        ends[i] += max(0, (out - 1) * strides[i] + span - total)
    return [*pads[:n], *ends]


class MaxPool(ReferenceMaxPool):
    """MaxPool in float64 (pads from ``pads``/``auto_pad`` as -inf, ceil_mode as extra -inf at the end); with the
    Indices output, the reference's own (a Python loop over output positions)."""

    op_domain = ""

    def _run(self, x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        n = x.ndim - 2
        if len(self.onnx_node.output) > 1:  # the Indices output: the reference's own
            return super()._run(x, **attrs)
        kernel = [int(k) for k in attrs["kernel_shape"]]
        strides, dilations = _ints(attrs.get("strides"), 1, n), _ints(attrs.get("dilations"), 1, n)
        pads = _window_pads(x.shape[2:], kernel, strides, dilations, attrs)
        if attrs.get("ceil_mode"):
            pads = _ceil_pads(x.shape[2:], kernel, strides, dilations, pads)
        win = _windows(_pad(x, pads, -np.inf), kernel, strides, dilations)
        return (win.max(axis=tuple(range(2 + n, 2 + 2 * n))),)


class AveragePool(ReferenceAveragePool):
    """AveragePool in float64 for ceil_mode=0 and no dilation (otherwise the reference's own): the input is
    zero-padded explicitly, and with count_include_pad=0 the window sums are divided by the window's count of
    real (unpadded) positions."""

    op_domain = ""

    def _run(self, x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        n = x.ndim - 2
        kernel = [int(k) for k in attrs["kernel_shape"]]
        dilations = _ints(attrs.get("dilations"), 1, n)
        if attrs.get("ceil_mode") or any(d != 1 for d in dilations):
            return super()._run(x, **attrs)
        strides = _ints(attrs.get("strides"), 1, n)
        pads = _window_pads(x.shape[2:], kernel, strides, dilations, attrs)
        window_axes = tuple(range(2 + n, 2 + 2 * n))
        y = _windows(_pad(x, pads), kernel, strides, dilations).mean(axis=window_axes)
        if not attrs.get("count_include_pad"):
            ones = _pad(np.ones((1, 1, *x.shape[2:]), dtype=x.dtype), pads)
            y = y / _windows(ones, kernel, strides, dilations).mean(axis=window_axes)
        return (y,)


ORACLE_OPS: list[type[OpRun]] = [BatchNormalization, Conv, ConvTranspose, MaxPool, AveragePool]
