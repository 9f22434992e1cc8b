"""The standard CNN families, written here in torchvision's layouts (torchvision cannot be imported on the CPU torch).

Each builder keeps its family's depth and BatchNorm pattern, with narrow widths so tests stay fast:
ResNet-50 (bottleneck), ResNeXt-50 (grouped bottleneck), Inception-v3 modules, DenseNet (BN after
concatenation), MobileNetV2 (inverted residual, depthwise), squeeze-and-excitation, and VGG-11-BN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from training.population import recalibrate_bn


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, eps: float = 1e-5) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out, eps=eps)
    )


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1 -> 3x3 (grouped for ResNeXt) -> 1x1, each with BN; projection shortcut."""

    def __init__(self, c_in: int, width: int, c_out: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.a, self.b, self.c = (
            conv_bn(c_in, width, 1),
            conv_bn(width, width, 3, stride, groups),
            conv_bn(width, c_out, 1),
        )
        self.down = conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b(torch.relu(self.a(x))))
        return torch.relu(self.c(y) + self.down(x))


def resnet50_layout(base: int = 8, groups: int = 1, width_per_group: int = 0, classes: int = 10) -> nn.Module:
    """ResNet-50's stages [3, 4, 6, 3] (ResNeXt-50 with ``groups``), at ``base`` channels instead of 64."""
    layers: list[nn.Module] = [conv_bn(3, base, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c_in = base
    for stage, blocks in enumerate([3, 4, 6, 3]):
        planes = base * 2**stage
        width = planes * width_per_group * groups // base if width_per_group else planes
        for i in range(blocks):
            layers.append(Bottleneck(c_in, width, planes * 4, 2 if i == 0 and stage else 1, groups))
            c_in = planes * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))


class BasicConv(nn.Sequential):
    """Inception-v3's BasicConv2d: conv (no bias) -> BN (eps 0.001) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int | tuple[int, int], padding: int | tuple[int, int] = 0) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, k, padding=padding, bias=False), nn.BatchNorm2d(c_out, eps=0.001))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class InceptionA(nn.Module):
    """Inception-v3's InceptionA: 1x1, 5x5, double 3x3 and pooled branches, concatenated."""

    def __init__(self, c_in: int, pool: int) -> None:
        super().__init__()
        self.b1 = BasicConv(c_in, 16, 1)
        self.b5 = nn.Sequential(BasicConv(c_in, 12, 1), BasicConv(12, 16, 5, 2))
        self.b3 = nn.Sequential(BasicConv(c_in, 16, 1), BasicConv(16, 24, 3, 1), BasicConv(24, 24, 3, 1))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv(c_in, pool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(x)], 1)  # (N, 56 + pool, H, W)


class InceptionC(nn.Module):
    """Inception-v3's factorised 7x7 (1x7 then 7x1) module."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.b1 = BasicConv(c_in, 24, 1)
        self.b7 = nn.Sequential(
            BasicConv(c_in, c7, 1), BasicConv(c7, c7, (1, 7), (0, 3)), BasicConv(c7, 24, (7, 1), (3, 0))
        )
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv(c_in, 24, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b7(x), self.bp(x)], 1)  # (N, 72, H, W)


def inception_v3_layout(classes: int = 10) -> nn.Module:
    stem = [BasicConv(3, 16, 3), BasicConv(16, 16, 3, 1), nn.MaxPool2d(3, 2)]
    body = [InceptionA(16, 16), InceptionA(72, 24), InceptionA(80, 24), InceptionC(80, 12), InceptionC(72, 16)]
    return nn.Sequential(*stem, *body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(72, classes))


class DenseLayer(nn.Module):
    """DenseNet's layer: BN-ReLU-conv1x1-BN-ReLU-conv3x3 on the concatenation of every earlier output."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)  # BN after concatenation
        return self.conv2(torch.relu(self.norm2(self.conv1(torch.relu(self.norm1(x))))))


class DenseNet(nn.Module):
    """DenseNet-121's pattern (dense blocks and transitions) at 2 blocks of 4 layers, growth 8."""

    def __init__(self, classes: int = 10, growth: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        c = 16
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for block in range(2):
            layers = nn.ModuleList()
            for _ in range(4):
                layers.append(DenseLayer(c, growth))
                c += growth
            self.blocks.append(layers)
            if block == 0:
                self.transitions.append(
                    nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False))
                )
                c //= 2
        self.norm, self.fc = nn.BatchNorm2d(c), nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for i, layers in enumerate(self.blocks):
            features = [x]
            for layer in layers:
                features.append(layer(features))
            x = torch.cat(features, 1)
            if i < len(self.transitions):
                x = nn.functional.avg_pool2d(self.transitions[i](x), 2)
        return self.fc(torch.relu(self.norm(x)).mean(dim=(2, 3)))  # (N, classes)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool -> fc -> ReLU -> fc -> sigmoid -> channel gate."""

    def __init__(self, c: int, reduced: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, reduced, 1), nn.Conv2d(reduced, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * gate


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand -> depthwise 3x3 -> (SE) -> 1x1 project, residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, se: bool = False) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand, self.dw, self.project = (
            conv_bn(c_in, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, hidden),
            conv_bn(hidden, c_out, 1),
        )
        self.se = SqueezeExcite(hidden, max(hidden // 4, 4)) if se else nn.Identity()
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(nn.functional.relu6(self.dw(nn.functional.relu6(self.expand(x))))))
        return x + y if self.residual else y


def mobilenet_v2_layout(se: bool = False, classes: int = 10) -> nn.Module:
    """MobileNetV2's stages (MobileNetV3/EfficientNet-style squeeze-and-excitation with ``se``)."""
    spec = [(16, 8, 1, 1), (8, 12, 2, 6), (12, 12, 1, 6), (12, 16, 2, 6), (16, 16, 1, 6), (16, 24, 1, 6)]
    blocks = [InvertedResidual(i, o, s, e, se) for i, o, s, e in spec]
    head = [conv_bn(24, 64, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU6(), *blocks, *head)


def vgg11_bn_layout(classes: int = 10) -> nn.Module:
    """VGG-11-BN: conv3x3+BN+ReLU stacks with max-pooling, then a classifier."""
    layers: list[nn.Module] = []
    c_in = 3
    for c in [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64]:
        if c == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [*conv_bn(c_in, int(c), 3), nn.ReLU()]
            c_in = int(c)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "resnet50": (lambda: resnet50_layout(8), (3, 64, 64)),
    "resnext50_32x4d": (lambda: resnet50_layout(32, groups=8, width_per_group=4), (3, 32, 32)),
    "inception_v3": (inception_v3_layout, (3, 35, 35)),
    "densenet": (DenseNet, (3, 32, 32)),
    "mobilenet_v2": (mobilenet_v2_layout, (3, 32, 32)),
    "mobilenet_se": (lambda: mobilenet_v2_layout(se=True), (3, 32, 32)),
    "vgg11_bn": (vgg11_bn_layout, (3, 32, 32)),
}


def calibrated(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Population statistics from data (Algorithm 2 over random images), so activations are about 1."""
    gen = torch.Generator().manual_seed(seed)
    recalibrate_bn(model, [torch.randn(16, *shape, generator=gen) for _ in range(2)])
    return model.eval()


def random_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Statistics that do not match the activations: means and log-uniform variances in [0.1, 10], random
    gamma and beta. Deep networks then give outputs far from 1 (the case that used to be refused)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen))  # type: ignore[union-attr]
                m.running_var.copy_(10 ** (torch.rand(c, generator=gen) * 2 - 1))  # type: ignore[union-attr]
                m.weight.copy_(torch.randn(c, generator=gen).abs() + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen))
    return model.eval()
