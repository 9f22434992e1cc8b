"""The torch side of folding: BN modules and Conv/ConvTranspose/Linear layers in, float64 tensors out.

The arithmetic is ``export.folding.bn_math``'s (numpy, float64); this module only moves tensors in and out of
it and stores the results into modules: ``assign`` casts the float64 weight and bias once to the layer's
dtype, and ``ScaleShift`` is a BN lowered to its eval-mode affine map ``x * s + t`` per channel.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from export.folding import bn_math


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).cpu().numpy()


def _weight(layer: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, layer.weight)


def _bias64(layer: nn.Module, channels: int) -> np.ndarray:
    bias = getattr(layer, "bias", None)
    return _np(bias) if bias is not None else np.zeros(channels, dtype=np.float64)


def population_scale_shift(
    mean: torch.Tensor, var: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``bn_math.population_scale_shift`` on stored tensors of any dtype, as float64 tensors."""
    g, b = (_np(v) if v is not None else None for v in (gamma, beta))
    s, t = bn_math.population_scale_shift(_np(mean), _np(var), g, b, eps)
    return torch.from_numpy(s), torch.from_numpy(t)


def bn_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) in float64 such that BN in eval mode is ``x * s + t`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics has no population statistics to fold")
    return population_scale_shift(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def fold_into_preceding(layer: nn.Module, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New (weight, bias) in float64 for ``layer`` (Conv, ConvTranspose or Linear) followed by BN (s, t)."""
    w = _np(_weight(layer))
    transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
    groups = int(getattr(layer, "groups", 1))
    out_channels = groups * w.shape[1] if transposed else w.shape[0]
    new_w, new_b = bn_math.preceding_weight_bias(w, _bias64(layer, out_channels), _np(s), _np(t), groups, transposed)
    return torch.from_numpy(new_w), torch.from_numpy(new_b)


def fold_into_following(layer: nn.Module, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New (weight, bias) in float64 for BN (s, t) followed by ``layer`` (Conv with no padding, or Linear)."""
    w = _np(_weight(layer))
    groups = int(getattr(layer, "groups", 1))
    new_w, new_b = bn_math.following_weight_bias(w, _bias64(layer, w.shape[0]), _np(s), _np(t), groups)
    return torch.from_numpy(new_w), torch.from_numpy(new_b)


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
