"""Population statistics for BatchNorm inference: the paper's Algorithm 2 and the running-average modes.

During training BN normalises each channel with the mini-batch mean mu_B and *biased* variance sigma_B^2.
At inference it must use population statistics instead. Ioffe & Szegedy (2015, Algorithm 2, steps 8-10)
estimate them over training mini-batches B of size m, with the network in its training form:

    E[x]   = E_B[mu_B]
    Var[x] = m / (m - 1) * E_B[sigma_B^2]

For a convolutional BN the per-channel "mini-batch" is every location of every sample (section 3.2), so
m = N * H * W. When batch sizes differ (a short last batch) each batch contributes its own unbiased
variance m_B / (m_B - 1) * sigma_B^2; for equal sizes that is exactly the formula above.

Frameworks instead keep an exponential moving average (torch's ``momentum``, default 0.1) or, with
``momentum=None``, a cumulative average of per-batch mean and unbiased variance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)


def batchnorm_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """Every BatchNorm module of ``model`` (BatchNorm1d/2d/3d and SyncBatchNorm), by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def set_bn_stats_mode(model: nn.Module, mode: str, momentum: float = 0.1) -> None:
    """Make every BN layer keep an exponential ("ema") or cumulative ("cumulative") running average."""
    if mode not in ("ema", "cumulative"):
        raise ValueError(f"BN statistics mode must be 'ema' or 'cumulative', got {mode!r}")
    for bn in batchnorm_layers(model).values():
        bn.momentum = momentum if mode == "ema" else None


class _Accumulator:
    """Sums of per-batch channel means and unbiased variances (float64) of one BN layer's input."""

    def __init__(self) -> None:
        self.mean_sum: torch.Tensor | None = None
        self.var_sum: torch.Tensor | None = None
        self.batches = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().to(torch.float64)
        dims = [0, *range(2, x.dim())]  # every axis but the channel axis
        m = x.numel() // x.shape[1]
        if m < 2:
            raise ValueError("Algorithm 2 needs at least 2 values per channel in every mini-batch")
        mu = x.mean(dim=dims)
        var_biased = x.var(dim=dims, correction=0)
        unbiased = var_biased * (m / (m - 1))
        self.mean_sum = mu if self.mean_sum is None else self.mean_sum + mu
        self.var_sum = unbiased if self.var_sum is None else self.var_sum + unbiased
        self.batches += 1


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, batches: Iterable[Any], num_batches: int | None = None
) -> dict[str, dict[str, float]]:
    """Recompute every BN layer's population mean and variance by Algorithm 2 and store them.

    ``batches`` yields inputs (a tensor, or a tuple/list whose first item is the input). Every module is put
    in eval mode (dropout off) except the BN layers, which run in training mode so that each layer sees the
    inputs of the training network, as Algorithm 2 prescribes. The new statistics replace ``running_mean`` and
    ``running_var``; ``num_batches_tracked`` and the model's train/eval modes are left as they were.

    Returns, per BN layer, how far the statistics moved: the largest absolute change of the mean, the largest
    relative change of the variance, and the number of batches used.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return {}
    for name, bn in layers.items():
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError(f"BN layer {name!r} has track_running_stats=False: it keeps no population statistics")
    saved = {name: _Statistics.of(bn) for name, bn in layers.items()}
    accumulators = {name: _Accumulator() for name in layers}
    used = _forward_training_form(model, layers, accumulators, batches, num_batches)
    if used == 0:
        raise ValueError("recalibrate_bn received no batches")
    report: dict[str, dict[str, float]] = {}
    for name, bn in layers.items():
        acc = accumulators[name]
        if acc.mean_sum is None or acc.var_sum is None:
            saved[name].restore(bn)  # the layer was not reached (an unused branch): keep what it had
            continue
        report[name] = _store(bn, acc.mean_sum / acc.batches, acc.var_sum / acc.batches, saved[name])
        report[name]["batches"] = float(acc.batches)
    logger.info("recalibrated %d BN layers over %d mini-batches (Algorithm 2)", len(report), used)
    return report


@dataclass(frozen=True)
class _Statistics:
    """A copy of one BN layer's running statistics and counter."""

    mean: torch.Tensor
    var: torch.Tensor
    tracked: torch.Tensor

    @staticmethod
    def of(bn: _BatchNorm) -> _Statistics:
        assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
        return _Statistics(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())

    def restore(self, bn: _BatchNorm) -> None:
        """Put this copy back into ``bn``."""
        self.store(bn, self.mean, self.var)

    def store(self, bn: _BatchNorm, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Write ``mean`` and ``var`` (in the layer's dtype) and this copy's counter into ``bn``."""
        bn.running_mean.copy_(mean.to(self.mean.dtype))  # type: ignore[union-attr]
        bn.running_var.copy_(var.to(self.var.dtype))  # type: ignore[union-attr]
        bn.num_batches_tracked.copy_(self.tracked)  # type: ignore[union-attr]


def _forward_training_form(
    model: nn.Module,
    layers: dict[str, _BatchNorm],
    accumulators: dict[str, _Accumulator],
    batches: Iterable[Any],
    num_batches: int | None,
) -> int:
    """Run up to ``num_batches`` batches through ``model`` with only its BN layers in training mode, each
    layer's input going to its accumulator; restore every module's mode. Returns the batches run."""
    was_training = {name: m.training for name, m in model.named_modules()}
    handles = [bn.register_forward_pre_hook(accumulators[name]) for name, bn in layers.items()]
    model.eval()
    for bn in layers.values():
        bn.train()
    used = 0
    try:
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            used += 1
    finally:
        for handle in handles:
            handle.remove()
        for name, module in model.named_modules():
            module.train(was_training[name])
    return used


def _store(bn: _BatchNorm, mean: torch.Tensor, var: torch.Tensor, old: _Statistics) -> dict[str, float]:
    """Make (mean, var) the layer's population statistics, keeping its counter; report how far they moved."""
    old.store(bn, mean, var)
    rel = (var - old.var.double()).abs() / old.var.double().clamp_min(1e-12)
    return {
        "max_abs_mean_change": float((mean - old.mean.double()).abs().max()),
        "max_rel_var_change": float(rel.max()),
    }
