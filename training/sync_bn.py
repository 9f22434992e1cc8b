"""Synchronised BatchNorm that also runs on CPU (gloo), plus conversion to and from plain BatchNorm.

torch's ``nn.SyncBatchNorm`` only runs on accelerators. This module computes, in training mode, each
channel's mean and biased variance over the union of every process's mini-batch, exactly as one process
would on the concatenated batch:

    N = sum_r n_r,   mean = sum_r sum_i x_ri / N,   var = sum_r sum_i (x_ri - mean)^2 / N   (two passes)

The reductions run in float64 through :class:`AllReduceSum`, a differentiable sum over processes on the
public ``dist.all_reduce``. Every rank r computes the same y = sum_s x_s and its own loss L_r(y); the job's
objective is sum_r L_r, so d(sum_r L_r)/dx_s = sum_r dL_r/dy: the backward all-reduces the gradient, and the
backward pass is synchronised too. (It replaces the deprecated ``torch.distributed.nn.functional.all_reduce``,
whose backward is the same; torch's suggested ``_functional_collectives`` is private and has autograd only in
recent releases.) Running
statistics follow torch's rule: EMA with ``momentum`` (or a cumulative average when ``momentum`` is None) of
the mean and of the unbiased variance ``var * N / (N - 1)``. In eval mode, or without a process group of
more than one process, it is plain BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

PLAIN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class AllReduceSum(torch.autograd.Function):
    """y = sum over the default group's processes of x, on every process; the backward sums the gradients alike.

    Every process must call it, in the same order, with tensors of the same shape and dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        total = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over every process (see :class:`AllReduceSum`)."""
    out: torch.Tensor = AllReduceSum.apply(x)
    return out


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics span every process of the default group."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.spatial_dims = spatial_dims

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sync = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not sync:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        x64 = x.to(torch.float64)
        local_n = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        sums = all_reduce(torch.cat([x64.sum(dim=dims), local_n]))  # (C + 1): channel sums, count
        n = sums[-1]
        mean = sums[:-1] / n
        var = all_reduce((x64 - mean.view(shape)).pow(2).sum(dim=dims)) / n  # biased, over all processes
        tracked = self.num_batches_tracked
        if self.running_mean is not None and self.running_var is not None and tracked is not None:
            with torch.no_grad():
                tracked.add_(1)
                factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / (n - 1))
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach().to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        y = (x64 - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _replace(module: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """``module`` with every submodule for which ``make`` returns a replacement swapped for it; each
    replacement takes over the original's parameters, buffers and train/eval mode."""
    replacement = make(module)
    if replacement is not None:
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        module.add_module(name, _replace(child, make))
    return module


def convert_to_sync(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d by a SyncBatchNorm with the same parameters and statistics."""

    def make(m: nn.Module) -> nn.Module | None:
        if not isinstance(m, _BatchNorm):
            return None
        dims = next((d for d, cls in PLAIN.items() if isinstance(m, cls)), None)  # None: a SyncBatchNorm
        if dims is None:
            return None
        return SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, spatial_dims=dims)

    return _replace(module, make)


def convert_to_plain(module: nn.Module) -> nn.Module:
    """The inverse of :func:`convert_to_sync` (torch's nn.SyncBatchNorm too): plain BatchNorm{1,2,3}d."""

    def make(m: nn.Module) -> nn.Module | None:
        if not isinstance(m, (SyncBatchNorm, nn.SyncBatchNorm)):
            return None
        dims = m.spatial_dims if isinstance(m, SyncBatchNorm) else 2
        return PLAIN[dims](m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)

    return _replace(module, make)


__all__ = ["SyncBatchNorm", "convert_to_plain", "convert_to_sync"]
