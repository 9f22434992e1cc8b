"""The int8 variant: a real digits convnet, quantized with each calibration method, verified, gated, refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export import export_checkpoint
from export.errors import ExportError, VerificationError
from export.variants.int8 import Int8Gate, Int8Report, quantize_int8
from export.verification.checks import ort_session
from training.config import TrainConfig
from training.data import Dataset, load_dataset
from training.pipeline import run_training


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A convnet trained on digits for 150 steps (98% validation accuracy), folded and exported."""
    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(model="convnet", model_options={"widths": [8, 16]}, out=run, steps=150, plots=False)
    run_training(config.model_copy(update={"progress": False}))
    written = export_checkpoint(run, tmp_path_factory.mktemp("repo"), name="digits")
    return written.path / "model.onnx"


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _quantize(
    fp32: Path,
    out: Path,
    data: Dataset,
    method: str = "minmax",
    calibration: np.ndarray | str | None = "train",
    input_name: str = "input",
    gate: Int8Gate | None = None,
) -> Int8Report:
    """quantize_int8 calibrated on the training split and verified on the whole validation split."""
    cal = data.train_x.numpy() if isinstance(calibration, str) else calibration
    return quantize_int8(
        fp32, out, cal, method, data.val_x.numpy(), data.val_y.numpy(), input_name=input_name, gate=gate
    )


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_gate_passes_and_weights_are_per_channel_qdq(fp32_model: Path, digits: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "int8" / "model.onnx"
    report = _quantize(fp32_model, out, digits)
    gate = report.to_dict()["gate"]
    assert gate["passed"] and gate["agreement"] >= 0.99 and gate["accuracy_drop_points"] <= 0.5
    assert gate["validation_samples"] == len(digits.val_x) and gate["accuracy_fp32"] > 0.95
    assert "agreement" in gate["summary"] and "drop" in gate["summary"]
    model = onnx.load(str(out))
    inits = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 5  # 4 convs + the head
    for node in weighted:
        dq = producer[node.input[1]]  # the weight arrives through a DequantizeLinear of an int8 initializer
        assert dq.op_type == "DequantizeLinear"
        q_weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert q_weight.dtype == np.int8
        assert scale.shape == (q_weight.shape[0],), f"{node.name}: one scale per output channel"
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(report.nodes)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props if p.key.startswith("bnfold.")}
    assert meta["bnfold.precision"] == "int8" and meta["bnfold.labels"] == [str(i) for i in range(10)]
    # the written file alone classifies the validation split like the report says
    logits = ort_session(out, "enable_all").run(None, {"input": digits.val_x.numpy()})[0]
    accuracy = float((logits.argmax(1) == digits.val_y.numpy()).mean())
    assert accuracy == pytest.approx(gate["accuracy_int8"])


def test_each_calibration_method_is_applied_and_recorded(fp32_model: Path, digits: Dataset, tmp_path: Path) -> None:
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        out = tmp_path / f"{method}.onnx"
        report = _quantize(fp32_model, out, digits, method.capitalize())
        assert report.passed and report.method == method
        assert report.to_dict()["calibration"] == {"method": method, "samples": 512}
        model = onnx.load(str(out))
        meta = {p.key: json.loads(p.value) for p in model.metadata_props if p.key.startswith("bnfold.")}
        assert meta["bnfold.quantization"]["method"] == method
        scales[method] = {k: float(v) for k, v in _initializers(model).items() if k.endswith("_scale") and v.size == 1}
    # the methods choose different activation ranges, so at least one activation scale differs between each pair
    assert scales["minmax"] != scales["entropy"] and scales["minmax"] != scales["percentile"]
    assert scales["entropy"] != scales["percentile"]


def test_batch_invariance_holds(fp32_model: Path, digits: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    report = _quantize(fp32_model, out, digits)
    check = next(c for c in report.checks if c.name == "batch invariance")
    assert check.passed and check.samples == 8
    session = ort_session(out, "enable_all")
    x = digits.val_x.numpy()[:8]
    together = session.run(None, {"input": x})[0]
    for i in range(8):
        np.testing.assert_allclose(session.run(None, {"input": x[i : i + 1]})[0][0], together[i], rtol=0, atol=1e-5)


def test_layer_errors_cover_every_quantized_layer(fp32_model: Path, digits: Dataset, tmp_path: Path) -> None:
    report = _quantize(fp32_model, tmp_path / "model.onnx", digits)
    rows = report.to_dict()["layers"]
    assert [r["op"] for r in rows] == ["Conv"] * 4 + ["Gemm"]
    assert rows[-1]["output"] == "logits"
    for row in rows:
        assert 20 < row["weight_sqnr_db"] < 80 and 0 < row["output_rel_error"] < 0.1
        assert row["added_noise_db"] is not None
    assert report.to_dict()["most_sensitive_layer"] in {r["layer"] for r in rows}


def test_corrupt_calibration_misses_the_gate_and_writes_nothing(
    fp32_model: Path, digits: Dataset, tmp_path: Path
) -> None:
    out_dir = tmp_path / "int8"
    out_dir.mkdir()
    tiny = digits.train_x.numpy() * 0.02  # ranges 50x too narrow: real inputs saturate
    with pytest.raises(VerificationError, match=r"refused, nothing written.*agreement \d+\.\d+% on 359") as err:
        _quantize(fp32_model, out_dir / "model.onnx", digits, calibration=tiny)
    assert "FAIL top-1 agreement" in str(err.value)
    assert list(out_dir.iterdir()) == []


def test_unreachable_gate_is_refused_with_figures(fp32_model: Path, digits: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    with pytest.raises(VerificationError, match=r"accuracy drop.*allowed -1") as err:
        _quantize(fp32_model, out, digits, gate=Int8Gate(max_accuracy_drop=-1.0))
    assert "drop 0.00 points" in str(err.value) or "drop -" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("calibration", [None, np.zeros((0, 1, 8, 8), np.float32)])
def test_no_calibration_data_is_refused(
    fp32_model: Path, digits: Dataset, tmp_path: Path, calibration: np.ndarray | None
) -> None:
    with pytest.raises(ExportError, match="needs calibration data"):
        _quantize(fp32_model, tmp_path / "model.onnx", digits, calibration=calibration)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_refused(fp32_model: Path, digits: Dataset, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown int8 calibration method 'kl'"):
        _quantize(fp32_model, tmp_path / "m.onnx", digits, "kl")
    with pytest.raises(ExportError, match=r"shape \(1, 4, 4\) per sample; the model expects \(1, 8, 8\)"):
        _quantize(fp32_model, tmp_path / "m.onnx", digits, calibration=np.zeros((4, 1, 4, 4), np.float32))
    nan = digits.train_x.numpy().copy()
    nan[3, 0, 0, 0] = np.nan
    with pytest.raises(ExportError, match="NaN or Inf"):
        _quantize(fp32_model, tmp_path / "m.onnx", digits, calibration=nan)
    with pytest.raises(ExportError, match="expected input 'pixels'"):
        _quantize(fp32_model, tmp_path / "m.onnx", digits, input_name="pixels")
    assert list(tmp_path.iterdir()) == []
