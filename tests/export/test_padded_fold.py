"""BN in front of a zero-padded convolution (Conv -> ReLU -> BN -> Conv(pad=1)), folded exactly in both paths.

The scale goes into the following conv's weights and the shift stays as one per-channel Add of t/s before it:
the exported graph has no Mul for that BN and at most one Add, and passes export.verify's float64 rule. A zero
scale (gamma = 0) cannot carry the shift through it: that BN keeps today's Mul+Add lowering, with the reason.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.emit.from_onnx import export_onnx_graph
from export.emit.from_torch import export_onnx
from export.folding.onnx_fold import fold_onnx
from export.folding.torch_fold import fold_batchnorm
from export.report import PADDED_MAP
from tests.export.onnx_graphs import LOWER, PADDED, count_ops, judge, model

CHANNELS = 6


def keras_era(seed: int = 0) -> nn.Module:
    """Conv -> ReLU -> BN -> Conv(pad=1) -> flatten -> Linear, with non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3), nn.ReLU(), nn.BatchNorm2d(CHANNELS), nn.Conv2d(CHANNELS, 4, 3, padding=1),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
    )  # fmt: skip
    bn = net[2]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 3)  # type: ignore[operator]
        bn.running_var.uniform_(0.05, 4)  # type: ignore[operator]
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    return net.eval()


def _ops(proto: onnx.ModelProto) -> dict[str, int]:
    return {op: count_ops(proto, op) for op in ("BatchNormalization", "Mul", "Add")}


def test_torch_path_folds_the_scale_into_the_padded_conv_and_keeps_one_add(tmp_path: Path) -> None:
    net, x = keras_era(), torch.randn(8, 3, 8, 8)
    folded, fold_report = fold_batchnorm(net, (x,))
    assert [r.action for r in fold_report.rows] == [PADDED]
    assert "1 op fewer than Mul+Add" in fold_report.rows[0].reason
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
    report = export_onnx(net, (x[:2],), tmp_path / "m.onnx", samples=x)  # raises unless verification passes
    assert all(check.passed for check in report.checks) and report.fold.rows[0].action == PADDED
    assert _ops(onnx.load(str(tmp_path / "m.onnx"))) == {"BatchNormalization": 0, "Mul": 0, "Add": 1}


def test_onnx_path_folds_the_scale_into_the_padded_conv_and_keeps_one_add(tmp_path: Path) -> None:
    net, x = keras_era(1), torch.randn(8, 3, 8, 8)
    source = tmp_path / "keras.onnx"
    torch.onnx.export(
        copy.deepcopy(net), (x[:2],), str(source), dynamo=False, do_constant_folding=False,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    original = onnx.load(str(source))
    assert _ops(original)["BatchNormalization"] == 1
    report = export_onnx_graph(original, tmp_path / "folded.onnx", samples=x.numpy())  # raises unless it verifies
    assert [r.action for r in report.fold.rows] == [PADDED] and all(check.passed for check in report.checks)
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    assert _ops(folded) == {"BatchNormalization": 0, "Mul": 0, "Add": 1}


@pytest.mark.parametrize("auto_pad", ["pads", "SAME_UPPER"])
def test_onnx_grouped_padded_conv_matches_the_float64_oracle(auto_pad: str) -> None:
    rng = np.random.default_rng(3)
    pad = 'auto_pad = "SAME_UPPER"' if auto_pad == "SAME_UPPER" else "pads = [2, 1, 0, 1]"
    body = f"b = BatchNormalization (x, g, bb, m, v)\ny = Conv <group = 2, {pad}, strides = [2, 1]> (b, w, wb)"
    inits = {"w": rng.normal(size=(6, 2, 3, 3)), "wb": rng.normal(size=6), "g": rng.normal(size=4),
             "bb": rng.normal(size=4), "m": rng.normal(size=4) * 2, "v": 10 ** rng.uniform(-3, 1, size=4)}  # fmt: skip
    original = model(body, 13, "float[2,4,7,6] x", "float[2,6,4,6] y", **inits)
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [PADDED]
    assert _ops(folded) == {"BatchNormalization": 0, "Mul": 0, "Add": 1}
    verdict = judge(original, folded, rng.normal(size=(2, 4, 7, 6)).astype(np.float32))
    assert verdict.passed, verdict.line()


def test_a_zero_scale_keeps_the_lowering_with_the_reason() -> None:
    rng = np.random.default_rng(4)
    body = "b = BatchNormalization (x, g, bb, m, v)\ny = Conv <pads = [1, 1, 1, 1]> (b, w)"
    gamma = rng.normal(size=4)
    gamma[2] = 0.0
    inits = {"w": rng.normal(size=(3, 4, 3, 3)), "g": gamma, "bb": rng.normal(size=4), "m": rng.normal(size=4),
             "v": rng.uniform(0.1, 2, size=4)}  # fmt: skip
    original = model(body, 13, "float[2,4,5,5] x", "float[2,3,5,5] y", **inits)
    folded, report = fold_onnx(original)
    assert [r.action for r in report.rows] == [LOWER]
    assert "scale is 0 in channel(s) [2]" in report.rows[0].reason
    assert judge(original, folded, rng.normal(size=(2, 4, 5, 5)).astype(np.float32)).passed


def _conv_inputs(proto: onnx.ModelProto) -> list[int]:
    return [len(n.input) for n in proto.graph.node if n.op_type == "Conv"]


def test_torch_path_bias_map_leaves_no_op_for_the_bn(tmp_path: Path) -> None:
    net, x = keras_era(2), torch.randn(8, 3, 8, 8)
    folded, fold_report = fold_batchnorm(net, (x,), "bias-map")
    assert [r.action for r in fold_report.rows] == [PADDED_MAP]
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
    report = export_onnx(net, (x[:2],), tmp_path / "m.onnx", samples=x, padded="bias-map")  # verified
    assert all(check.passed for check in report.checks)
    written = onnx.load(str(tmp_path / "m.onnx"))
    assert _ops(written) == {"BatchNormalization": 0, "Mul": 0, "Add": 1}  # the map is the padded conv's bias
    assert sorted(_conv_inputs(written)) == [2, 3]  # the padded conv lost its bias vector to the map


def test_onnx_path_bias_map_where_the_input_size_is_fixed(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    body = (
        "r = Relu (x)\nb = BatchNormalization (r, g, bb, m, v)\n"
        "y = Conv <group = 2, pads = [2, 1, 0, 1], strides = [2, 1]> (b, w, wb)"
    )
    inits = {"w": rng.normal(size=(6, 2, 3, 3)), "wb": rng.normal(size=6), "g": rng.normal(size=4),
             "bb": rng.normal(size=4), "m": rng.normal(size=4) * 2, "v": 10 ** rng.uniform(-3, 1, size=4)}  # fmt: skip
    fixed = model(body, 13, "float[N,4,7,6] x", "float[N,6,4,6] y", **inits)
    folded, report = fold_onnx(fixed, None, "bias-map")
    assert [r.action for r in report.rows] == [PADDED_MAP]
    assert _ops(folded) == {"BatchNormalization": 0, "Mul": 0, "Add": 1} and _conv_inputs(folded) == [2]
    verdict = judge(fixed, folded, rng.normal(size=(3, 4, 7, 6)).astype(np.float32))
    assert verdict.passed, verdict.line()
    free = model(body, 13, "float[N,4,H,W] x", "float[N,6,A,B] y", **inits)  # no fixed size: the Add stays
    _, report = fold_onnx(free, None, "bias-map")
    assert [r.action for r in report.rows] == [PADDED] and "input size is not fixed" in report.rows[0].reason


def test_the_cli_takes_padded_bn_and_refuses_an_unknown_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from export.cli import main

    net, x = keras_era(3), torch.randn(2, 3, 8, 8)
    torch.onnx.export(
        net, (x,), str(tmp_path / "k.onnx"), dynamo=False, do_constant_folding=False, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    argv = ["--onnx", str(tmp_path / "k.onnx"), "--repository", str(tmp_path / "repo"), "--name", "k"]
    assert main([*argv, "--padded-bn", "stretch"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "unknown padded-conv fold 'stretch'" in err, err
    assert not (tmp_path / "repo" / "k").exists()
    assert main([*argv, "--padded-bn", "bias-map"]) == 0
    report = json.loads((tmp_path / "repo" / "k" / "1" / "export_report.json").read_text())
    assert [row["action"] for row in report["fold"]["rows"]] == [PADDED_MAP]
    assert report["onnx_ops"].get("Mul", 0) == 0 and report["onnx_ops"].get("Add", 0) == 1
