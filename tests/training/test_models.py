"""The model registry: every model builds, runs, and has no bias in a layer that BN follows."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from training.errors import ConfigError
from training.models import MODEL_NAMES, build_model


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("batch_norm", [True, False])
def test_models_build_and_run(name: str, batch_norm: bool) -> None:
    model = build_model(name, num_classes=7, in_channels=3, image_size=16, batch_norm=batch_norm)
    out = model(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 7)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_bn == batch_norm


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer_followed_by_bn_has_no_bias(name: str) -> None:
    model = build_model(name, in_channels=1, image_size=8)
    mods = list(model.modules())
    checked = 0
    for a, b in itertools.pairwise(mods):
        if isinstance(a, (nn.Conv2d, nn.Linear)) and isinstance(b, nn.modules.batchnorm._BatchNorm):
            assert a.bias is None, f"{name}: {a} is followed by BN but has a bias"
            checked += 1
    assert checked > 0


def test_mlp_is_the_papers_network() -> None:
    model = build_model("mlp", image_size=28)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [100, 100, 100, 10]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 3


def test_resnet_depth_and_preact() -> None:
    post = build_model("resnet", depth=20)
    pre = build_model("resnet", depth=20, preact=True)
    convs = sum(isinstance(m, nn.Conv2d) for m in post.modules())
    assert convs == 19 + 2  # 19 3x3 convs plus two 1x1 projection shortcuts
    assert sum(isinstance(m, nn.Conv2d) for m in pre.modules()) == convs
    # pre-activation: the first block begins with BN applied to the stem's output
    assert isinstance(pre.blocks[0].bn1, nn.BatchNorm2d)
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model("resnet", depth=10)


def test_unknown_model_and_option_are_named() -> None:
    with pytest.raises(ConfigError, match="valid models: convnet, mlp, resnet"):
        build_model("vgg")
    with pytest.raises(ConfigError, match=r"no option.*dropout"):
        build_model("convnet", dropout=0.5)
    with pytest.raises(ConfigError, match="activation"):
        build_model("convnet", activation="tanh")
