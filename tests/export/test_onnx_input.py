"""ONNX files in and out: external data round trip, check_onnx_input's refusals, and graphs from torch's exporter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.errors import ExportError
from export.folding.onnx_fold import fold_onnx
from export.graph.files import check_onnx_input, load_onnx, save_onnx
from tests.export.onnx_graphs import bn_stats, count_ops, judge, model, run
from tests.export.zoo import randomise_statistics

BN = "BatchNormalization"


def _conv_bn(rng: np.random.Generator) -> onnx.ModelProto:
    body = "c = Conv <pads = [1, 1, 1, 1]> (x, w)\ny = BatchNormalization (c, s_g, s_b, s_m, s_v)"
    return model(
        body, 15, "float[1,8,6,6] x", "float[1,32,6,6] y", w=rng.normal(size=(32, 8, 3, 3)), **bn_stats(rng, 32, "s")
    )


def test_external_data_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    original = _conv_bn(rng)
    before = original.SerializeToString()
    save_onnx(original, tmp_path / "in.onnx", external_data=True)
    assert original.SerializeToString() == before, "saving with external data changed the model in memory"
    assert (tmp_path / "in.onnx.data").stat().st_size >= 32 * 8 * 9 * 4
    assert (tmp_path / "in.onnx").stat().st_size < 32 * 8 * 9 * 4

    folded, _ = fold_onnx(load_onnx(tmp_path / "in.onnx"))
    save_onnx(folded, tmp_path / "out.onnx", external_data=True)
    assert (tmp_path / "out.onnx.data").is_file()
    reloaded = load_onnx(tmp_path / "out.onnx")
    assert count_ops(reloaded, BN) == 0
    x = rng.normal(size=(1, 8, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(reloaded, x), run(folded, x))
    assert judge(original, reloaded, x).passed


def test_small_models_are_saved_whole_unless_asked(tmp_path: Path) -> None:
    save_onnx(_conv_bn(np.random.default_rng(1)), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx.data").exists()


def test_load_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ExportError, match=r"bad\.onnx: cannot be read as an ONNX model"):
        load_onnx(tmp_path / "bad.onnx")
    with pytest.raises(ExportError, match=r"missing\.onnx: no such ONNX file"):
        load_onnx(tmp_path / "missing.onnx")


def test_check_accepts_a_valid_single_input_model() -> None:
    check_onnx_input(_conv_bn(np.random.default_rng(2)))


def test_check_refuses_a_model_that_fails_the_checker() -> None:
    broken = _conv_bn(np.random.default_rng(3))
    broken.graph.node[0].input[1] = "no_such_weight"
    with pytest.raises(ExportError, match=r"^m\.onnx fails onnx\.checker: .*no_such_weight") as info:
        check_onnx_input(broken, path="m.onnx")
    assert "\n" not in str(info.value)


def _checker_with_protobuf_limit(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model counts as 2 GB or more, and onnx.checker refuses such a model in memory, as protobuf does;
    returns the list of what the checker was given ("memory" or a file name)."""
    real, given = onnx.checker.check_model, []

    def check_model(model: onnx.ModelProto | str, *args: object, **kwargs: object) -> None:
        given.append("memory" if isinstance(model, onnx.ModelProto) else Path(model).name)
        if isinstance(model, onnx.ModelProto):
            raise ValueError("This protobuf of onnx model is too large (>2GB). Call check_model with model path.")
        real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("export.graph.files.PROTOBUF_LIMIT", 1)
    monkeypatch.setattr(onnx.checker, "check_model", check_model)
    return given


def test_check_takes_a_model_too_large_for_the_in_memory_checker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From its file when there is one, else from a temporary copy with external data (it was refused before)."""
    big, broken = _conv_bn(np.random.default_rng(5)), _conv_bn(np.random.default_rng(6))
    broken.graph.node[0].input[1] = "no_such_weight"
    save_onnx(big, tmp_path / "big.onnx", external_data=True)
    given = _checker_with_protobuf_limit(monkeypatch)
    check_onnx_input(big, path=tmp_path / "big.onnx")
    check_onnx_input(big)  # export_onnx_graph's case: a ModelProto and no file
    assert given == ["big.onnx", "model.onnx"]
    with pytest.raises(ExportError, match=r"^ONNX model fails onnx\.checker: .*no_such_weight"):
        check_onnx_input(broken)


def test_check_takes_several_inputs_and_refuses_none() -> None:
    rng = np.random.default_rng(4)
    two = model("y = Add (a, b)", 15, "float[2,3] a, float[2,3] b", "float[2,3] y")
    check_onnx_input(two)
    none = model("y = Constant <value_float = 1.0> ()", 15, "", "float y")
    with pytest.raises(ExportError, match=r"has no graph input"):
        check_onnx_input(none)
    # an initializer listed among the inputs (IR < 4 style) does not count as an input
    old_style = _conv_bn(rng)
    old_style.graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [32, 8, 3, 3]))
    check_onnx_input(old_style)


def test_check_refuses_training_mode() -> None:
    rng = np.random.default_rng(5)
    body = "y, rm, rv = BatchNormalization <training_mode = 1> (x, s_g, s_b, s_m, s_v)"
    training = model(body, 15, "float[2,3] x", "float[2,3] y", **bn_stats(rng, 3, "s"))
    with pytest.raises(ExportError, match=r"BatchNormalization 'y' is in training mode: training_mode=1"):
        check_onnx_input(training)


class _BnNobodyFolds(nn.Module):
    """BNs torch's exporter keeps: one at the input, one after a ReLU, one after Linear (legacy exporter)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(3),
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
            nn.BatchNorm2d(8),
            nn.Flatten(),
            nn.Linear(8 * 6 * 6, 10),
            nn.BatchNorm1d(10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, 10)


def _torch_export(dynamo: bool) -> onnx.ModelProto:
    net = randomise_statistics(_BnNobodyFolds()).eval()
    x = torch.randn(2, 3, 6, 6)
    if dynamo:
        return torch.onnx.export(net, (x,), dynamo=True, verbose=False).model_proto  # type: ignore[union-attr]
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=12, do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["legacy", "dynamo"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_graph_from_torch_exporter_that_keeps_batchnorm(dynamo: bool) -> None:
    exported = _torch_export(dynamo)
    assert count_ops(exported, BN) >= 2, "the exporter folded every BN; this test needs one it kept"
    check_onnx_input(exported)
    folded, report = fold_onnx(exported)
    assert count_ops(folded, BN) == 0
    assert len(report.rows) == count_ops(exported, BN)
    onnx.checker.check_model(folded)
    x = np.random.default_rng(6).normal(size=(2, 3, 6, 6)).astype(np.float32)
    verdict = judge(exported, folded, x)
    assert verdict.passed, verdict.line()
