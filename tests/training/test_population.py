"""Algorithm 2, computed independently in numpy, must match ``recalibrate_bn`` to 1e-6 relative.

The numpy side runs its own forward pass of the *training* network (every BN normalising with the
mini-batch mean and biased variance), records each BN layer's input, and applies the paper's formulas
E[x] = E_B[mu_B] and Var[x] = m/(m-1) E_B[sigma_B^2] with m = values per channel per mini-batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from training.population import recalibrate_bn, set_bn_stats_mode


def _bn_train_np(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, axes: tuple[int, ...]) -> np.ndarray:
    shape = [1] * x.ndim
    shape[1] = -1
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased
    return (x - mu) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


def _conv2d_np(x: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    k = w.shape[-1]
    win = sliding_window_view(xp, (k, k), axis=(2, 3))  # (N, C, H, W, k, k)
    return np.einsum("nchwij,ocij->nohw", win, w)


def _paper_statistics(inputs_per_batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    axes = tuple(i for i in range(inputs_per_batch[0].ndim) if i != 1)
    m = inputs_per_batch[0].size // inputs_per_batch[0].shape[1]
    mean = np.mean([b.mean(axis=axes) for b in inputs_per_batch], axis=0)
    var = m / (m - 1) * np.mean([b.var(axis=axes) for b in inputs_per_batch], axis=0)
    return mean, var


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2 - 0.5)  # includes negative gamma
                m.bias.copy_(torch.randn(m.num_features, generator=g))


def test_algorithm2_matches_numpy_batchnorm1d() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(12, 9, bias=False),
        nn.BatchNorm1d(9),
        nn.Sigmoid(),
        nn.Linear(9, 7, bias=False),
        nn.BatchNorm1d(7),
        nn.Sigmoid(),
        nn.Linear(7, 3),
    ).double()
    _randomise_bn(model)
    batches = [torch.randn(16, 12, dtype=torch.float64) * 2 + 1 for _ in range(5)]

    w1, bn1, w2, bn2 = (model[0].weight, model[1], model[3].weight, model[4])
    seen1, seen2 = [], []
    for xb in batches:
        x = xb.numpy()
        z1 = x @ w1.detach().numpy().T
        seen1.append(z1)
        h1 = 1 / (1 + np.exp(-_bn_train_np(z1, bn1.weight.detach().numpy(), bn1.bias.detach().numpy(), bn1.eps, (0,))))
        z2 = h1 @ w2.detach().numpy().T
        seen2.append(z2)
    expected = [_paper_statistics(seen1), _paper_statistics(seen2)]

    report = recalibrate_bn(model, batches)
    for bn, (mean, var) in zip((bn1, bn2), expected, strict=True):
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-6)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-6)
    assert set(report) == {"1", "4"}
    assert report["1"]["batches"] == 5


def test_algorithm2_matches_numpy_batchnorm2d() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1, bias=False),
        nn.BatchNorm2d(5),
        nn.ReLU(),
    ).double()
    _randomise_bn(model)
    batches = [torch.randn(6, 2, 7, 7, dtype=torch.float64) * 1.5 - 0.5 for _ in range(4)]
    c1, bn1, c2, bn2 = model[0], model[1], model[3], model[4]
    seen1, seen2 = [], []
    for xb in batches:
        z1 = _conv2d_np(xb.numpy(), c1.weight.detach().numpy(), 1)
        seen1.append(z1)
        h1 = np.maximum(_bn_train_np(z1, bn1.weight.detach().numpy(), bn1.bias.detach().numpy(), bn1.eps, (0, 2, 3)), 0)
        seen2.append(_conv2d_np(h1, c2.weight.detach().numpy(), 1))
    expected = [_paper_statistics(seen1), _paper_statistics(seen2)]

    recalibrate_bn(model, batches)
    for bn, (mean, var) in zip((bn1, bn2), expected, strict=True):
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-6)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-6)


def test_recalibration_keeps_modes_and_counter_and_respects_num_batches() -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), nn.Dropout(0.5))
    model.train()
    model[2].eval()
    tracked = model[1].num_batches_tracked.clone()
    batches = [torch.randn(8, 4) for _ in range(6)]
    report = recalibrate_bn(model, iter(batches), num_batches=2)
    assert report["1"]["batches"] == 2
    assert model[0].training and model[1].training and not model[2].training
    assert torch.equal(model[1].num_batches_tracked, tracked)
    z = torch.cat([b @ model[0].weight.T for b in batches[:2]]).detach()
    torch.testing.assert_close(model[1].running_mean, (z[:8].mean(0) + z[8:].mean(0)) / 2)


def test_dropout_stays_off_during_recalibration() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.9), nn.Linear(6, 3, bias=False), nn.BatchNorm1d(3))
    batches = [torch.randn(32, 4) for _ in range(3)]
    recalibrate_bn(model, batches)
    first = model[3].running_mean.clone()
    recalibrate_bn(model, batches)  # with dropout active the two runs would differ
    torch.testing.assert_close(model[3].running_mean, first, rtol=0, atol=0)


def test_untracked_bn_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        recalibrate_bn(model, [torch.randn(4, 4)])


def test_cumulative_mode_averages_every_batch_equally() -> None:
    bn = nn.BatchNorm1d(2)
    set_bn_stats_mode(bn, "cumulative")
    xs = [torch.randn(10, 2) + i for i in range(3)]
    for x in xs:
        bn(x)
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in xs]).mean(0))
    set_bn_stats_mode(bn, "ema", 0.3)
    assert bn.momentum == 0.3
