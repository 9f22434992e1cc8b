"""CIFAR-style ResNet (He et al. 2016) of basic blocks, depth = 6n + 2, with a pre-activation variant.

Post-activation block: conv -> BN -> act -> conv -> BN, add shortcut, act.
Pre-activation block (``preact=True``): BN -> act -> conv -> BN -> act -> conv, add shortcut.
A shortcut that changes shape is a 1x1 strided conv (followed by BN in the post-activation form).
"""

from __future__ import annotations

import torch
from torch import nn

from training.errors import ConfigError
from training.models.layers import make_activation, norm2d
from training.models.registry import register_model


def _conv3x3(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """Post-activation basic block: BN after every conv."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool, activation: str) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride, bias=not batch_norm)
        self.bn1 = norm2d(c_out, batch_norm)
        self.act1 = make_activation(activation)
        self.conv2 = _conv3x3(c_out, c_out, 1, bias=not batch_norm)
        self.bn2 = norm2d(c_out, batch_norm)
        self.act2 = make_activation(activation)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not batch_norm), norm2d(c_out, batch_norm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))  # (N, C_out, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN -> act -> conv, twice; the shortcut taps the activated input."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool, activation: str) -> None:
        super().__init__()
        self.bn1 = norm2d(c_in, batch_norm)
        self.act1 = make_activation(activation)
        self.conv1 = _conv3x3(c_in, c_out, stride, bias=not batch_norm)
        self.bn2 = norm2d(c_out, batch_norm)
        self.act2 = make_activation(activation)
        self.conv2 = _conv3x3(c_out, c_out, 1, bias=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))  # (N, C_in, H, W)
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)  # (N, C_out, H/s, W/s)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + skip


class ResNet(nn.Module):
    """Stem conv, three stages of ``n`` blocks at widths w, 2w, 4w, global pooling, linear head."""

    def __init__(
        self,
        depth: int,
        width: int,
        in_channels: int,
        num_classes: int,
        batch_norm: bool,
        activation: str,
        preact: bool,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        block = PreActBlock if preact else BasicBlock
        self.preact = preact
        self.stem = _conv3x3(in_channels, width, 1, bias=preact or not batch_norm)
        self.stem_bn = nn.Identity() if preact else norm2d(width, batch_norm)
        self.stem_act = nn.Identity() if preact else make_activation(activation)
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(c_in, c_out, stride, batch_norm, activation))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        # pre-activation nets end with a final BN -> act before pooling
        self.final_bn = norm2d(c_in, batch_norm) if preact else nn.Identity()
        self.final_act = make_activation(activation) if preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))  # (N, w, H, W)
        x = self.blocks(x)  # (N, 4w, H/4, W/4)
        x = self.final_act(self.final_bn(x))
        x = torch.flatten(self.pool(x), 1)  # (N, 4w)
        return self.head(x)  # (N, num_classes)


@register_model("resnet")
def resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    batch_norm: bool = True,
    activation: str = "relu",
    depth: int = 20,
    width: int = 16,
    preact: bool = False,
) -> nn.Module:
    """ResNet-``depth`` (6n+2) with base width ``width``; ``image_size`` is accepted for uniformity."""
    del image_size  # global pooling makes the network size-agnostic
    return ResNet(depth, width, in_channels, num_classes, batch_norm, activation, preact)
