"""The standard CNN families export with zero BatchNormalization and pass verification; wrong folds are caught.

Verification is judged against a float64 run of the original (export.verification.checks): deep networks used to be
refused on a tolerance tighter than float32 itself. Each family runs under calibrated statistics (outputs
about 1) and under random statistics that do not match the activations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import export.folding.torch_fold as fold_module
from export import VerificationError
from export.emit.from_torch import export_onnx
from export.folding.torch_layers import population_scale_shift
from export.graph.inspect import count_ops
from tests.export.families import FAMILIES, calibrated, random_statistics, resnet50_layout

pytestmark = pytest.mark.slow


def _export(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    report = export_onnx(model, (x[:2],), path, samples=x, random_samples=16, validation=x)
    assert report.passed
    ratios = [c.ratio for c in report.checks if c.candidate is not None]
    assert ratios and all(r < 10 for r in ratios)  # reported, and of float32's own order


@pytest.mark.parametrize("statistics", ["calibrated", "random"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_exports_with_no_batchnorm_and_passes_verification(family: str, statistics: str, tmp_path: Path) -> None:
    build, shape = FAMILIES[family]
    torch.manual_seed(0)
    model = build()
    model = calibrated(model, shape) if statistics == "calibrated" else random_statistics(model)
    bn_layers = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    _export(model, shape, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert count_ops(proto).get("BatchNormalization", 0) == 0
    assert bn_layers >= 8  # the family really is built with BatchNorm


class Decoder(nn.Module):
    """A deep network with every pattern a wrong fold can break: a BN before a padded conv (the input BN
    before the stem), a square ConvTranspose followed by BN, and ResNet-50's 53 conv+BN pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(3)
        self.backbone = resnet50_layout(8, classes=256)
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2, bias=False)
        self.up_bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 8 * 8 + 256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.input_bn(x))  # (N, 256)
        up = torch.relu(self.up_bn(self.up(features.view(-1, 16, 4, 4))))  # (N, 16, 8, 8)
        return self.head(torch.cat([up.flatten(1), features], 1))  # (N, 10)


def _shift_through_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fold_module._Folder.why_not_following

    def ignore_padding(self: fold_module._Folder, node: torch.fx.Node, bn: nn.Module) -> str | None:
        why = real(self, node, bn)  # type: ignore[arg-type]
        return None if why and "reads padding" in why else why

    monkeypatch.setattr(fold_module._Folder, "why_not_following", ignore_padding)


def _transposed_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fold_module.fold_into_preceding

    def as_if_conv(layer: nn.Module, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(layer, nn.ConvTranspose2d):  # scale axis 0 (its input channels) as if it were a Conv
            w = layer.weight.detach().double() * s.reshape(-1, 1, 1, 1)
            return w, t
        return real(layer, s, t)

    monkeypatch.setattr(fold_module, "fold_into_preceding", as_if_conv)


def _one_channel_scale_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fold_module.fold_into_preceding
    calls = []

    def drop(layer: nn.Module, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(layer)
        if len(calls) == 20:  # one channel of one layer deep inside the network
            s = s.clone()
            s[3] = 1.0
        return real(layer, s, t)

    monkeypatch.setattr(fold_module, "fold_into_preceding", drop)


def _eps_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_eps(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
        assert bn.running_mean is not None and bn.running_var is not None
        return population_scale_shift(bn.running_mean, bn.running_var, bn.weight, bn.bias, 0.0)

    monkeypatch.setattr(fold_module, "bn_scale_shift", no_eps)


WRONG_FOLDS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "shift pushed through a padded conv": _shift_through_padding,
    "ConvTranspose weight layout transposed": _transposed_layout,
    "one channel's scale dropped": _one_channel_scale_dropped,
    "eps left out": _eps_left_out,
}


def test_the_decoder_exports_when_folded_correctly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _export(random_statistics(Decoder()), (3, 64, 64), tmp_path / "m.onnx")


@pytest.mark.parametrize("mistake", list(WRONG_FOLDS))
def test_a_wrong_fold_of_a_deep_network_is_caught(
    mistake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = random_statistics(Decoder())
    WRONG_FOLDS[mistake](monkeypatch)
    with pytest.raises(VerificationError, match=r"FAIL torch folded \(real\)"):
        _export(model, (3, 64, 64), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
