"""Building blocks shared by the models: activation lookup and the conv/linear -> BN -> activation unit."""

from __future__ import annotations

from torch import nn

from training.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` ("relu" or "sigmoid")."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; valid activations: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def norm2d(channels: int, batch_norm: bool) -> nn.Module:
    """BatchNorm2d over ``channels``, or identity when BN is off."""
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def conv_bn_act(c_in: int, c_out: int, batch_norm: bool, activation: str, stride: int = 1) -> nn.Sequential:
    """3x3 conv (bias only without BN) -> BN -> activation."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm),
        norm2d(c_out, batch_norm),
        make_activation(activation),
    )
