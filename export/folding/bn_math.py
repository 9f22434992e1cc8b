"""The fold formulas, in float64 numpy, shared by both folders: ``torch_layers`` (torch graphs) and ``onnx_rules``
(ONNX graphs) call these and nothing else for the arithmetic. No graph logic and no torch here.

BatchNorm with population statistics is a per-channel affine map (c indexes channels, axis 1):

    BN(x)_c = gamma_c * (x_c - mean_c) / sqrt(var_c + eps) + beta_c = s_c * x_c + t_c
    s = gamma / sqrt(var + eps),   t = beta - mean * s          (affine=False: gamma = 1, beta = 0)

Fold into the PRECEDING layer y = W x + b (BN acts on y's channels, the layer's output channels o):

    W'[o, ...] = W[o, ...] * s[o]          b'[o] = (b[o] - mean[o]) * s[o] + beta[o] = b[o] * s[o] + t[o]

  - Conv{1,2,3}d, any groups: weight [C_out, C_in/groups, k...]; the output channel is axis 0.
  - ConvTranspose{1,2,3}d, any groups: weight [C_in, C_out/groups, k...]; output channel
    o = g * (C_out/groups) + j lives at weight[g * (C_in/groups) : (g+1) * (C_in/groups), j, ...].
  - Linear: weight [out, in]; the output feature is axis 0.

Fold into the FOLLOWING layer z = W * BN(x) + b (BN acts on the layer's input channels c):

    W'[o, c, ...] = W[o, c, ...] * s[c]     b'[o] = b[o] + sum_{c, k} W[o, c, k] * t[c]

  exact for Linear, and for a convolution only where no padding is read (padding 0): a zero-padded
  position holds 0, not t. Grouped: input channel c of output o is g(o) * (C_in/groups) + j.

Fold the scale into a following ZERO-PADDED convolution, the shift staying in front of it (every s non-zero):

    Conv_W(pad0(s * x + t)) = Conv_W(pad0(s * (x + t / s))) = Conv_{W'}(pad0(x + t / s))

  since a padded zero is s * 0; W' as above, b unchanged (``following_weight_bias`` with t = 0), and
  ``Shift(t / s)`` before the conv: one per-channel Add instead of a Mul and an Add. Or, for one fixed input
  size, by linearity: Conv_W(pad0(s * x + t)) = Conv_{W'}(pad0(x)) + M with M = Conv_W(pad0(t)) (b included), a
  constant [C_out, H_out, W_out] map (``BiasMap``) that replaces the conv's bias: no per-channel op is left.
"""

from __future__ import annotations

import numpy as np

F64 = np.float64


def scale_shift(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """The one formula for BN's (s, t): ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s`` (float64 in)."""
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def population_scale_shift(
    mean: np.ndarray, var: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """``scale_shift`` on stored arrays of any float dtype; gamma/beta None (affine=False) mean 1 and 0."""
    mean64, var64 = np.asarray(mean, dtype=F64), np.asarray(var, dtype=F64)
    gamma64 = np.asarray(gamma, dtype=F64) if gamma is not None else np.ones_like(mean64)
    beta64 = np.asarray(beta, dtype=F64) if beta is not None else np.zeros_like(mean64)
    return scale_shift(gamma64, beta64, mean64, var64, eps)


def preceding_weight_bias(
    w: np.ndarray, b: np.ndarray, s: np.ndarray, t: np.ndarray, groups: int, transposed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Fold into the preceding layer on float64 arrays: weight [C_out, ...] (or ConvTranspose's layout), bias b."""
    if transposed:
        c_in, c_out_g = w.shape[0], w.shape[1]
        # [C_in, C_out/g, k...] -> [g, C_in/g, C_out/g, k...]; output channel o = g_idx * C_out/g + j
        wg = w.reshape(groups, c_in // groups, c_out_g, *w.shape[2:])
        sg = s.reshape(groups, 1, c_out_g, *([1] * (w.ndim - 2)))
        new_w = (wg * sg).reshape(w.shape)
    else:  # Conv (weight [C_out, C_in/g, k...]) or Linear (weight [out, in])
        new_w = w * s.reshape(-1, *([1] * (w.ndim - 1)))
    return new_w, b * s + t


def following_weight_bias(
    w: np.ndarray, b: np.ndarray, s: np.ndarray, t: np.ndarray, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fold into the following layer on float64 arrays: weight [C_out, C_in/groups, k...] (or [out, in]), bias b."""
    c_out = w.shape[0]
    per_group = w.shape[1]
    # input channel index of weight[o, j] is g(o) * per_group + j, with g(o) = o // (c_out / groups)
    group_of_out = np.arange(c_out) // (c_out // groups)
    in_index = group_of_out[:, None] * per_group + np.arange(per_group)[None, :]  # [C_out, C_in/g]
    s_oc = s[in_index].reshape(c_out, per_group, *([1] * (w.ndim - 2)))
    t_oc = t[in_index].reshape(c_out, per_group, *([1] * (w.ndim - 2)))
    new_w = w * s_oc
    new_b = b + (w * t_oc).reshape(c_out, -1).sum(axis=1)
    return new_w, new_b
