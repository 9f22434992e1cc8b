"""A zoo of BatchNorm patterns, each a small module, with the fold action bnfold must take for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FOLD_PREV, FOLD_NEXT, LOWER = "folded-into-preceding", "folded-into-following", "lowered-to-scale-shift"
PADDED = "folded-into-following-padded"


def randomise_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial population statistics: negative gamma, variances from 1e-4 to 1e2, shifted means."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=g) * 2)
                m.running_var.copy_(10 ** (torch.rand(c, generator=g) * 6 - 4))
                m.running_var[0] = 1e-4
                m.running_var[-1] = 1e2
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.weight[0] = -abs(float(m.weight[0])) - 0.1
                    m.bias.copy_(torch.randn(c, generator=g))
    return model


class Seq(nn.Sequential):
    pass


class LinearSeq3D(nn.Module):
    """Linear on (N, C, L) then BatchNorm1d over C: BN's channel axis is not the Linear's features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


class Residual(nn.Module):
    """BN after a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x) + x)


class FanOut(nn.Module):
    """A conv whose output feeds BN and, separately, a skip path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(self.bn(y)) + y


class SharedConv(nn.Module):
    """One conv module called at two sites (on the input and on its mirror image), each with its own BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn_a(self.conv(x)))
        return a + self.bn_b(self.conv(torch.flip(x, dims=(-1,))))


class Functional(nn.Module):
    """BN written as a functional call on registered statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        bn = self.bn
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, bn.eps)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    actions: tuple[str, ...]


CASES = [
    Case("conv2d", lambda: Seq(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)), (3, 9, 9), (FOLD_PREV,)),
    Case("conv2d_bias", lambda: Seq(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), (3, 9, 9), (FOLD_PREV,)),
    Case("conv1d", lambda: Seq(nn.Conv1d(3, 6, 3, padding=2), nn.BatchNorm1d(6)), (3, 11), (FOLD_PREV,)),
    Case("conv3d", lambda: Seq(nn.Conv3d(2, 4, 3, bias=False), nn.BatchNorm3d(4)), (2, 5, 6, 5), (FOLD_PREV,)),
    Case("conv2d_groups", lambda: Seq(nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)), (4, 8, 8), (FOLD_PREV,)),
    Case("depthwise", lambda: Seq(nn.Conv2d(5, 5, 3, groups=5, padding=1), nn.BatchNorm2d(5)), (5, 7, 7), (FOLD_PREV,)),
    Case("convT1d", lambda: Seq(nn.ConvTranspose1d(3, 4, 3, stride=2), nn.BatchNorm1d(4)), (3, 7), (FOLD_PREV,)),
    Case(
        "convT2d",
        lambda: Seq(nn.ConvTranspose2d(3, 5, 3, stride=2, bias=False), nn.BatchNorm2d(5)),
        (3, 5, 5),
        (FOLD_PREV,),
    ),
    Case(
        "convT2d_groups", lambda: Seq(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)), (4, 5, 5), (FOLD_PREV,)
    ),
    Case(
        "convT3d_groups",
        lambda: Seq(nn.ConvTranspose3d(4, 6, 2, groups=2), nn.BatchNorm3d(6)),
        (4, 3, 4, 3),
        (FOLD_PREV,),
    ),
    Case("linear", lambda: Seq(nn.Flatten(), nn.Linear(12, 7, bias=False), nn.BatchNorm1d(7)), (3, 4), (FOLD_PREV,)),
    Case("linear_3d", LinearSeq3D, (4, 6), (LOWER,)),
    Case("bn_then_conv", lambda: Seq(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)), (3, 8, 8), (FOLD_NEXT,)),
    Case(
        "bn_then_grouped_conv",
        lambda: Seq(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1, groups=2, bias=False)),
        (4, 5, 5),
        (FOLD_NEXT,),
    ),
    Case("bn_then_linear", lambda: Seq(nn.Flatten(), nn.BatchNorm1d(10), nn.Linear(10, 3)), (10,), (FOLD_NEXT,)),
    Case("bn_then_padded_conv", lambda: Seq(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1)), (3, 6, 6), (PADDED,)),
    Case(
        "bn_then_padded_grouped_conv",
        lambda: Seq(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, padding=(2, 1), groups=2, dilation=2)),
        (4, 7, 6),
        (PADDED,),
    ),
    Case(
        "bn_after_relu", lambda: Seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.ReLU()), (3, 7, 7), (LOWER,)
    ),
    Case("bn_after_residual", Residual, (3, 6, 6), (LOWER,)),
    Case("conv_fan_out", FanOut, (3, 6, 6), (LOWER,)),
    Case("shared_conv", SharedConv, (3, 6, 6), (FOLD_PREV, FOLD_PREV)),
    Case("affine_false", lambda: Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)), (3, 6, 6), (FOLD_PREV,)),
    Case("functional", Functional, (3, 5, 5), (LOWER,)),
]


def build_case(case: Case, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = randomise_statistics(case.build(), seed).eval()
    x = torch.randn(6, *case.input_shape)
    return model, x
