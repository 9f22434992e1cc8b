"""The paper's MNIST network (Ioffe & Szegedy 2015, section 4.1): 3 hidden layers of 100 units.

Each hidden layer is Linear -> BatchNorm1d -> nonlinearity (sigmoid by default, as in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.layers import make_activation
from training.models.registry import register_model


class MLP(nn.Module):
    """Fully connected classifier on flattened images."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: int,
        depth: int,
        batch_norm: bool,
        activation: str,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden, bias=not batch_norm))
            layers.append(nn.BatchNorm1d(hidden) if batch_norm else nn.Identity())
            layers.append(make_activation(activation))
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (N, C*H*W)
        x = self.hidden(x)  # (N, hidden)
        return self.head(x)  # (N, num_classes)


@register_model("mlp")
def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    batch_norm: bool = True,
    activation: str = "sigmoid",
    hidden: int = 100,
    depth: int = 3,
) -> nn.Module:
    """The section 4.1 network: ``depth`` x ``hidden`` fully connected layers."""
    return MLP(in_channels * image_size * image_size, num_classes, hidden, depth, batch_norm, activation)
