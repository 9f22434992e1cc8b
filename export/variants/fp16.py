"""The optional fp16 variant: a folded float32 module converted to half precision, float32 at its edges.

Preconditions, checked before conversion: every folded weight and bias fits fp16 (|v| <= 65504); a tiny
running variance (< 1e-4) makes s = gamma / sqrt(var + eps) large and is warned about, since it magnifies
fp16 rounding. The exported graph takes and returns float32 (Cast nodes at both ends), so clients and
the service handle it exactly like the float32 model.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from export.errors import ExportError

logger = logging.getLogger(__name__)

FP16_MAX = float(torch.finfo(torch.float16).max)
TINY_VARIANCE = 1e-4


class Float16Model(nn.Module):
    """Runs ``inner`` (already converted to fp16) on float32 input, returning float32."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.float16)).to(torch.float32)  # (N, num_classes), float32


def check_fp16(original: nn.Module, folded: nn.Module) -> list[str]:
    """Refuse values that overflow fp16; return warnings about tiny running variances."""
    for name, tensor in [*folded.named_parameters(), *folded.named_buffers()]:
        if tensor.is_floating_point():
            peak = float(tensor.detach().abs().max()) if tensor.numel() else 0.0
            if peak > FP16_MAX:
                raise ExportError(
                    f"cannot make an fp16 variant: folded tensor {name!r} holds {peak:.4g}, beyond fp16's "
                    f"largest value {FP16_MAX:.0f}; export in float32 (drop --fp16)"
                )
    warnings = []
    for name, bn in original.named_modules():
        if isinstance(bn, _BatchNorm) and bn.running_var is not None:
            low = float(bn.running_var.min())
            if low < TINY_VARIANCE:
                warnings.append(
                    f"BatchNorm {name!r} has a running variance of {low:.2e}: its folded scale is large and "
                    "fp16 rounding is magnified; check the fp16 verification figures"
                )
    for w in warnings:
        logger.warning("%s", w)
    return warnings


def to_fp16(folded: nn.Module) -> nn.Module:
    """A float32-in, float32-out module computing in fp16."""
    return Float16Model(copy.deepcopy(folded).half()).eval()
