"""``bnfold-export --onnx``: graphs from onnx.helper (opsets 9, 12, 15) and from torch's exporter, through the
whole pipeline: zero BatchNormalization, verified against the float64 oracle, names kept, one version written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.cli import main
from export.graph.inspect import count_ops
from tests.export.onnx_graphs import bn_stats, model
from tests.export.test_onnx_input import _BnNobodyFolds, _checker_with_protobuf_limit
from tests.export.zoo import randomise_statistics

CLASSIFIER = """
    c = Conv <pads = [1, 1, 1, 1], group = 2> (image, w)
    n = BatchNormalization {spatial} (c, bn_g, bn_b, bn_m, bn_v)
    r = Relu (n)
    p = GlobalAveragePool (r)
    f = Flatten (p)
    scores = Gemm <transB = 1> (f, fc_w, fc_b)
"""


def helper_graph(opset: int) -> onnx.ModelProto:
    """Conv (grouped) -> BN -> ReLU -> pool -> Gemm, with a dynamic batch axis, at ``opset``."""
    rng = np.random.default_rng(opset)
    body = CLASSIFIER.format(spatial="<spatial = 1>" if opset < 9 else "")
    return model(
        body,
        opset,
        "float[N, 4, 6, 6] image",
        "float[N, 5] scores",
        w=rng.normal(size=(8, 2, 3, 3)),
        fc_w=rng.normal(size=(5, 8)),
        fc_b=rng.normal(size=5),
        **bn_stats(rng, 8, "bn"),
    )


def torch_graph() -> onnx.ModelProto:
    """torch's legacy exporter without constant folding keeps every BatchNormalization."""
    net = randomise_statistics(_BnNobodyFolds()).eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.randn(2, 3, 6, 6),), buffer, dynamo=False, opset_version=12,
                      do_constant_folding=False, input_names=["pixels"], output_names=["logits"],
                      dynamic_axes={"pixels": {0: "N"}, "logits": {0: "N"}})  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


GRAPHS = {"helper-opset9": lambda: helper_graph(9), "helper-opset12": lambda: helper_graph(12),
          "helper-opset15": lambda: helper_graph(15), "torch-exporter": torch_graph}  # fmt: skip


@pytest.mark.parametrize("name", list(GRAPHS))
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_onnx_file_is_folded_verified_and_written(name: str, tmp_path: Path) -> None:
    original = GRAPHS[name]()
    assert count_ops(original).get("BatchNormalization", 0) >= 1
    onnx.save(original, str(tmp_path / "in.onnx"))
    repo = tmp_path / "repo"
    assert main(["--onnx", str(tmp_path / "in.onnx"), "--repository", str(repo), "--name", "m"]) == 0
    written = onnx.load(str(repo / "m" / "1" / "model.onnx"))
    assert count_ops(written).get("BatchNormalization", 0) == 0
    assert [i.name for i in written.graph.input] == [
        i.name for i in original.graph.input if i.name in ("image", "pixels")
    ]
    assert [o.name for o in written.graph.output] == [o.name for o in original.graph.output]
    report = json.loads((repo / "m" / "1" / "export_report.json").read_text())
    checks = {c["name"]: c for c in report["verification"]}
    assert all(c["passed"] for c in checks.values())
    assert "onnxruntime, ORT_DISABLE_ALL (random)" in checks and "onnxruntime, ORT_ENABLE_ALL (random)" in checks
    assert report["fold"]["totals"]["batchnorm_layers"] == count_ops(original)["BatchNormalization"]
    config = (repo / "m" / "config.pbtxt").read_text()
    assert f'name: "{written.graph.input[0].name}"' in config and f'name: "{written.graph.output[0].name}"' in config


def test_an_output_without_the_batch_axis_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = model("y = ReduceSum <keepdims = 0> (a)", 11, "float[N, 3] a", "float y")
    onnx.save(total, str(tmp_path / "total.onnx"))
    assert main(["--onnx", str(tmp_path / "total.onnx"), "--repository", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "ONNX output 'y' has shape () for a batch of 2 inputs" in err
    assert not (tmp_path / "repo").exists()


def test_a_corrupt_file_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    assert main(["--onnx", str(tmp_path / "bad.onnx"), "--repository", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "bad.onnx" in err and "cannot be read as an ONNX model" in err


def test_the_onnx_path_checks_the_source_graph_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """job_from_onnx checks the file (from disk when it is 2 GB or more); export_onnx_graph does not check the
    same graph again, in memory, where onnx.checker cannot take a large one."""
    onnx.save(GRAPHS["helper-opset12"](), str(tmp_path / "in.onnx"))
    given = _checker_with_protobuf_limit(monkeypatch)
    assert main(["--onnx", str(tmp_path / "in.onnx"), "--repository", str(tmp_path / "repo"), "--name", "m"]) == 0
    assert given.count("in.onnx") == 1 and "memory" not in given


def test_a_graph_onnx_runtime_cannot_run_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 3: it passes onnx.checker, so the error comes from the first ONNX Runtime run (counting classes)."""
    bad = model("y = Reshape (x, s)", 15, "float[N, 3, 4, 4] x", "float[N, 5] y", s=np.array([-1, 5], dtype=np.int64))
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    assert main(["--onnx", str(tmp_path / "bad.onnx"), "--repository", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "bad.onnx: passes onnx.checker but ONNX Runtime cannot run it" in err and "Reshape" in err
    assert not (tmp_path / "repo").exists()


def test_a_graph_with_no_batchnorm_is_verified_and_written_with_0_bn(tmp_path: Path) -> None:
    """Defect 8: nothing to fold is not an error; also a model.onnx that bnfold-export itself wrote."""
    onnx.save(GRAPHS["helper-opset15"](), str(tmp_path / "in.onnx"))
    repo = tmp_path / "repo"
    assert main(["--onnx", str(tmp_path / "in.onnx"), "--repository", str(repo), "--name", "m"]) == 0
    again = ["--onnx", str(repo / "m" / "1" / "model.onnx"), "--repository", str(repo), "--name", "again"]
    assert main(again) == 0
    report = json.loads((repo / "again" / "1" / "export_report.json").read_text())
    assert report["fold"]["totals"]["batchnorm_layers"] == 0 and report["fold"]["rows"] == []
    assert all(c["passed"] for c in report["verification"])


def test_a_refused_export_into_a_new_repository_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 5: --int8 without calibration data, into a repository (and its parent) that do not exist yet."""
    onnx.save(GRAPHS["helper-opset15"](), str(tmp_path / "in.onnx"))
    repo = tmp_path / "new" / "repo"
    assert main(["--onnx", str(tmp_path / "in.onnx"), "--repository", str(repo), "--int8"]) == 2
    assert "--int8 needs calibration data" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
