"""fold_batchnorm on the zoo: no BatchNorm left, the right action for each pattern, as exact as float32 allows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from export import ExportError, fold_batchnorm
from export.folding.torch_layers import fold_into_preceding
from export.verification.checks import Reference, against_oracle
from tests.export.zoo import CASES, Case, Seq, build_case

RTOL, ATOL = 1e-4, 1e-5


def _has_bn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fold_zoo(case: Case) -> None:
    model, x = build_case(case)
    original_state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        expected = model(x)
    folded, report = fold_batchnorm(model, (x[:2],))
    assert not _has_bn(folded)
    assert not [n for n in folded.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]
    assert tuple(r.action for r in report.rows) == case.actions
    with torch.no_grad():
        oracle = copy.deepcopy(model).double()(x.double()).numpy()
        ref = Reference("real", x.numpy(), oracle, expected.numpy())
        check = against_oracle("torch folded", folded(x).numpy(), ref)
    assert check.passed, check.line()
    # the original is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, original_state[k]), k
    assert _has_bn(model) or case.name == "functional"
    # each rewrite, measured locally on the layer's real input, moved its output by float32 rounding only
    assert all(r.max_rel_diff <= 2**-18 for r in report.rows), [(r.bn, r.max_rel_diff) for r in report.rows]


def test_fold_uses_population_statistics_even_in_training_mode() -> None:
    model, x = build_case(CASES[0])
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    folded, _ = fold_batchnorm(model, (x,))
    assert model.training  # mode of the original unchanged
    with torch.no_grad():
        torch.testing.assert_close(folded(x), expected, rtol=RTOL, atol=ATOL)
        # and the answer for one sample does not depend on the rest of the batch
        torch.testing.assert_close(folded(x[:1]), folded(x)[:1], rtol=1e-5, atol=1e-5)


def test_shared_conv_gets_a_copy_per_call_site() -> None:
    case = next(c for c in CASES if c.name == "shared_conv")
    model, x = build_case(case)
    folded, report = fold_batchnorm(model, (x,))
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and not torch.equal(convs[0].weight, convs[1].weight)
    # the first site got the copy; by then the second site was the original's only caller
    assert "called at several sites" in report.rows[0].reason and "own copy conv_site1" in report.rows[0].reason
    assert "several sites" not in report.rows[1].reason
    pairs = [(folded.get_submodule("conv_site1"), model.bn_a), (folded.get_submodule("conv"), model.bn_b)]
    for conv, bn in pairs:
        s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        assert torch.equal(conv.weight, (model.conv.weight.double() * s.view(-1, 1, 1, 1)).float())


def test_lowering_reasons_are_reported() -> None:
    case = next(c for c in CASES if c.name == "bn_then_padded_conv")
    model, x = build_case(case)
    with torch.no_grad():
        model[0].weight[1] = 0.0  # gamma = 0: s = 0 in channel 1, so the shift cannot move in front of the scale
    _, report = fold_batchnorm(model, (x,))
    assert "reads padding" in report.rows[0].reason and "scale is 0 in channel(s) [1]" in report.rows[0].reason
    table = report.table()
    assert "lowered-to-scale-shift" in table and "1 BatchNorm layers: 0 folded, 1 lowered" in table
    assert report.to_dict()["totals"]["lowered-to-scale-shift"] == 1


def test_untracked_bn_is_refused_with_reason() -> None:
    model = Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ExportError, match=r"'1' has track_running_stats=False.*no population statistics"):
        fold_batchnorm(model, (torch.randn(2, 3, 5, 5),))


def test_untraceable_model_is_refused() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x) if x.sum() > 0 else x

    with pytest.raises(ExportError, match="cannot be traced"):
        fold_batchnorm(DataDependent(), (torch.randn(2, 3),))


def test_grouped_conv_transpose_fold_uses_the_transpose_layout() -> None:
    """A fold that scaled ConvTranspose weights along axis 0 (the Conv layout) would be wrong here."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 6, 3, groups=2)
    x = torch.randn(3, 4, 5, 5)
    s = torch.rand(6, dtype=torch.float64) + 0.5
    w, b = fold_into_preceding(conv, s, torch.zeros(6, dtype=torch.float64))
    folded = copy.deepcopy(conv)
    folded.weight.data, folded.bias.data = w.float(), b.float()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), conv(x) * s.float().view(1, -1, 1, 1), rtol=1e-5, atol=1e-5)


def test_fold_math_runs_in_float64_and_casts_once() -> None:
    """Folded weights equal the float64 formula rounded once to float32, bit for bit."""
    model, x = build_case(next(c for c in CASES if c.name == "conv2d_bias"))
    conv, bn = model[0], model[1]
    folded, _ = fold_batchnorm(model, (x,))
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = (conv.weight.double() * s.view(-1, 1, 1, 1)).float()
    b = ((conv.bias.double() - bn.running_mean.double()) * s + bn.bias.double()).float()
    new_conv = next(m for m in folded.modules() if isinstance(m, nn.Conv2d))
    assert torch.equal(new_conv.weight, w) and torch.equal(new_conv.bias, b)
    # the same formula evaluated in float32 rounds differently somewhere: the test can tell them apart
    s32 = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w32 = conv.weight * s32.view(-1, 1, 1, 1)
    b32 = (conv.bias - bn.running_mean) * s32 + bn.bias
    assert not (torch.equal(w32, w) and torch.equal(b32, b))
