"""What BN computes: batch mean and biased batch variance in training mode, population statistics in eval."""

from __future__ import annotations

import torch
from torch import nn


def test_training_mode_uses_batch_mean_and_biased_variance() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, eps=1e-5).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    mu = x.mean(dim=(0, 2, 3), keepdim=True)
    var_biased = ((x - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # divide by m = N*H*W, not m-1
    expected = (x - mu) / torch.sqrt(var_biased + 1e-5) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(bn(x), expected, rtol=1e-5, atol=1e-5)
    # the unbiased variance would give a measurably different answer
    var_unbiased = var_biased * (100 / 99)
    wrong = (x - mu) / torch.sqrt(var_unbiased + 1e-5) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert not torch.allclose(bn(x), wrong, rtol=1e-5, atol=1e-5)


def test_eval_mode_uses_population_statistics_and_is_batch_independent() -> None:
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(4).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        bn.running_var.copy_(torch.tensor([0.25, 4.0, 1.0, 9.0]))
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.0]))
    x = torch.randn(6, 4)
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(bn(x), expected)
    # one sample alone gives the same answer as inside the batch
    torch.testing.assert_close(bn(x[:1]), bn(x)[:1])
