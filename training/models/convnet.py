"""A small VGG-style network: stages of (conv3x3 -> BN -> activation) x 2 followed by 2x2 max-pooling."""

from __future__ import annotations

import torch
from torch import nn

from training.models.layers import conv_bn_act
from training.models.registry import register_model


class ConvNet(nn.Module):
    """VGG-style stages, global average pooling and a linear head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...],
        image_size: int,
        batch_norm: bool,
        activation: str,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for i, width in enumerate(widths):
            stages += [
                conv_bn_act(c_in, width, batch_norm, activation),
                conv_bn_act(width, width, batch_norm, activation),
            ]
            # pool between stages while the feature map is still at least 4x4
            if i < len(widths) - 1 and size >= 4:
                stages.append(nn.MaxPool2d(2))
                size //= 2
            c_in = width
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, C_last, H', W')
        x = torch.flatten(self.pool(x), 1)  # (N, C_last)
        return self.head(x)  # (N, num_classes)


@register_model("convnet")
def convnet(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 8,
    batch_norm: bool = True,
    activation: str = "relu",
    widths: tuple[int, ...] | list[int] = (32, 64, 128),
) -> nn.Module:
    """VGG-style convnet; ``widths`` gives the channel count of each stage."""
    return ConvNet(in_channels, num_classes, tuple(widths), image_size, batch_norm, activation)
