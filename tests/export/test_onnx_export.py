"""export_onnx on the zoo: zero BatchNormalization nodes, ONNX Runtime within tolerance, checks that bite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export import ExportError, VerificationError
from export.emit.from_torch import export_onnx
from export.graph.inspect import count_ops
from export.verification.checks import ort_session
from tests.export.zoo import CASES, Case, Seq, build_case, randomise_statistics


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_export_zoo(case: Case, tmp_path: Path) -> None:
    model, x = build_case(case)
    path = tmp_path / "m.onnx"
    report = export_onnx(model, (x[:2],), path, samples=x, metadata={"bnfold.labels": ["a", "b"]})
    proto = onnx.load(str(path))
    assert count_ops(proto).get("BatchNormalization", 0) == 0
    assert report.passed and [c.name for c in report.checks] == [
        "torch folded (real)",
        "torch folded (random)",
        "onnxruntime, ORT_DISABLE_ALL (real)",
        "onnxruntime, ORT_DISABLE_ALL (random)",
        "onnxruntime, ORT_ENABLE_ALL (real)",
        "onnxruntime, ORT_ENABLE_ALL (random)",
        "batch invariance",
    ]
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["bnfold.labels"] == '["a", "b"]' and "bnfold.fold_summary" in meta
    # independent of the report: run ONNX Runtime ourselves on a batch size never seen at export
    with torch.no_grad():
        expected = model(torch.cat([x, x[:1]])).numpy()
    got = ort_session(path).run(None, {"input": torch.cat([x, x[:1]]).numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_wrong_fold_fails_verification_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding with the unbiased-variance mistake must be caught by verification, not shipped."""
    import export.folding.torch_fold as fold_module

    real = fold_module.fold_into_preceding

    def off_by_a_little(layer: nn.Module, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return real(layer, s * (1 + 1e-3), t)

    monkeypatch.setattr(fold_module, "fold_into_preceding", off_by_a_little)
    model, x = build_case(CASES[0])
    path = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match=r"FAIL torch folded \(real\)"):
        export_onnx(model, (x[:2],), path, samples=x)
    assert list(tmp_path.iterdir()) == []


def test_validation_top1_agreement_is_checked(tmp_path: Path) -> None:
    model, x = build_case(CASES[0])
    flat = Seq(model, nn.Flatten(), nn.Linear(8 * 9 * 9, 5)).eval()
    report = export_onnx(flat, (x[:2],), tmp_path / "m.onnx", validation=x)
    agreement = [c for c in report.checks if c.name == "top-1 agreement"]
    assert agreement and agreement[0].passed and agreement[0].samples == len(x)


def test_fp16_variant_and_its_refusal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomise_statistics(Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())).eval()
    x = torch.randn(8, 3, 6, 6)
    report = export_onnx(model, (x[:2],), tmp_path / "h.onnx", samples=x, fp16=True)
    assert report.precision == "float16" and report.passed
    proto = onnx.load(str(tmp_path / "h.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    assert any("running variance" in w for w in report.warnings)  # var 1e-4 in channel 0 is warned about

    with torch.no_grad():
        model[0].weight.mul_(1e4)  # folded weights now exceed fp16's 65504
    with pytest.raises(ExportError, match="beyond fp16's largest value"):
        export_onnx(model, (x[:2],), tmp_path / "o.onnx", fp16=True)
    assert not (tmp_path / "o.onnx").exists()
