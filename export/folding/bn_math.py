"""The fold formulas, in float64, on plain tensors. No graph logic here: see ``export.folding.torch_fold`` for that.

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

from typing import cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

F64 = torch.float64


def _weight(layer: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, layer.weight)


def bn_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) in float64 such that BN in eval mode is ``x * s + t`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics has no population statistics to fold")
    return population_scale_shift(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def population_scale_shift(
    mean: torch.Tensor, var: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale_shift`` on stored tensors of any dtype; gamma/beta None (affine=False) mean 1 and 0."""
    mean64, var64 = mean.detach().to(F64), var.detach().to(F64)
    gamma64 = gamma.detach().to(F64) if gamma is not None else torch.ones_like(mean64)
    beta64 = beta.detach().to(F64) if beta is not None else torch.zeros_like(mean64)
    return scale_shift(gamma64, beta64, mean64, var64, eps)


def scale_shift(
    gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one formula for BN's (s, t): ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s`` (float64 in)."""
    s = gamma / torch.sqrt(var + eps)
    return s, beta - mean * s


def _bias64(layer: nn.Module, channels: int) -> torch.Tensor:
    bias = getattr(layer, "bias", None)
    return bias.detach().to(F64) if bias is not None else torch.zeros(channels, dtype=F64)


def fold_into_preceding(layer: nn.Module, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New (weight, bias) in float64 for ``layer`` (Conv, ConvTranspose or Linear) followed by BN (s, t)."""
    w = _weight(layer).detach().to(F64)
    transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
    groups = int(getattr(layer, "groups", 1))
    out_channels = groups * w.shape[1] if transposed else w.shape[0]
    return preceding_weight_bias(w, _bias64(layer, out_channels), s, t, groups, transposed)


def preceding_weight_bias(
    w: torch.Tensor, b: torch.Tensor, s: torch.Tensor, t: torch.Tensor, groups: int, transposed: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold into the preceding layer on float64 tensors: weight [C_out, ...] (or ConvTranspose's layout), bias b."""
    if transposed:
        c_in, c_out_g = w.shape[0], w.shape[1]
        # [C_in, C_out/g, k...] -> [g, C_in/g, C_out/g, k...]; output channel o = g_idx * C_out/g + j
        wg = w.reshape(groups, c_in // groups, c_out_g, *w.shape[2:])
        sg = s.reshape(groups, 1, c_out_g, *([1] * (w.dim() - 2)))
        new_w = (wg * sg).reshape(w.shape)
    else:  # Conv (weight [C_out, C_in/g, k...]) or Linear (weight [out, in])
        new_w = w * s.reshape(-1, *([1] * (w.dim() - 1)))
    return new_w, b * s + t


def fold_into_following(layer: nn.Module, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New (weight, bias) in float64 for BN (s, t) followed by ``layer`` (Conv with no padding, or Linear)."""
    w = _weight(layer).detach().to(F64)
    return following_weight_bias(w, _bias64(layer, w.shape[0]), s, t, getattr(layer, "groups", 1))


def following_weight_bias(
    w: torch.Tensor, b: torch.Tensor, s: torch.Tensor, t: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold into the following layer on float64 tensors: weight [C_out, C_in/groups, k...] (or [out, in]), bias b."""
    c_out = w.shape[0]
    per_group = w.shape[1]
    # input channel index of weight[o, j] is g(o) * per_group + j, with g(o) = o // (c_out / groups)
    group_of_out = torch.arange(c_out) // (c_out // groups)
    in_index = group_of_out[:, None] * per_group + torch.arange(per_group)[None, :]  # [C_out, C_in/g]
    s_oc = s[in_index].reshape(c_out, per_group, *([1] * (w.dim() - 2)))
    t_oc = t[in_index].reshape(c_out, per_group, *([1] * (w.dim() - 2)))
    new_w = w * s_oc
    new_b = b + (w * t_oc).reshape(c_out, -1).sum(dim=1)
    return new_w, new_b


def assign(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Store float64 ``weight``/``bias`` into ``layer``, cast once to the layer's dtype (adds a bias if none)."""
    dtype = _weight(layer).dtype
    layer.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


class ScaleShift(nn.Module):
    """A BatchNorm lowered to its eval-mode affine map: ``x * scale + shift`` per channel (axis 1).

    Exported to ONNX as one Mul and one Add, with no BatchNormalization node.
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("scale", scale.to(dtype))
        self.register_buffer("shift", shift.to(dtype))

    scale: torch.Tensor
    shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)  # broadcast over (N, C, *spatial)
        return x * self.scale.view(view) + self.shift.view(view)


class Shift(nn.Module):
    """``x + shift`` per channel (axis 1): a BN's shift t / s left in front of a zero-padded conv (one ONNX Add)."""

    def __init__(self, shift: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("shift", shift.to(dtype))

    shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift.view((1, -1) + (1,) * (x.dim() - 2))


class BiasMap(nn.Module):
    """``y + map``, map [C_out, H, W] fixed: a conv's bias plus a BN shift's effect through its zero padding."""

    def __init__(self, bias_map: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("bias_map", bias_map.to(dtype))

    bias_map: torch.Tensor

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.bias_map
