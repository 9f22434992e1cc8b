"""``bnfold-export --onnx`` on graphs of any tensor signature: several inputs, several outputs, a feature map,
uint8 NHWC pixels. Each is folded (no BatchNormalization left), verified on inputs generated per datatype, and
its config.pbtxt lists every input and output with its own type; labels apply only to an (N, classes) output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from contracts.repository import read_config
from export.cli import main
from export.graph.inspect import count_ops
from tests.export.signatures import MODELS, uint8_nhwc

# name -> (inputs as (name, Triton type, dims), outputs likewise, the output labels apply to)
EXPECTED = {
    "two_inputs": (
        [("image", "TYPE_FP32", [3, 8, 8]), ("extra", "TYPE_FP32", [4])],
        [("logits", "TYPE_FP32", [5])],
        "logits",
    ),
    "logits_and_embedding": (
        [("x", "TYPE_FP32", [3, 8, 8])],
        [("logits", "TYPE_FP32", [5]), ("embedding", "TYPE_FP32", [4])],
        "logits",
    ),
    "feature_map": ([("x", "TYPE_FP32", [3, 10, 10])], [("y", "TYPE_FP32", [8, 10, 10])], None),
    "uint8_nhwc": ([("pixels", "TYPE_UINT8", [8, 8, 3])], [("logits", "TYPE_FP32", [3])], "logits"),
    "mixed_types": (
        [("ids", "TYPE_INT64", [4]), ("mask", "TYPE_BOOL", [4])],
        [("half", "TYPE_FP16", [4]), ("twice", "TYPE_INT64", [4]), ("unmasked", "TYPE_BOOL", [4])],
        "half",  # the first floating-point (N, classes) output
    ),
}


def _tensors(messages: object) -> list[tuple[str, str, list[int]]]:
    from tritonclient.grpc.model_config_pb2 import DataType

    return [(t.name, DataType.Name(t.data_type), list(t.dims)) for t in messages]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_any_signature_exports_verified(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / f"{name}.onnx"
    onnx.save(MODELS[name](), str(src))
    assert count_ops(onnx.load(str(src))).get("BatchNormalization") == 1
    assert main(["--onnx", str(src), "--repository", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    model_dir = tmp_path / "repo" / name
    written = onnx.load(str(model_dir / "1" / "model.onnx"))
    assert "BatchNormalization" not in count_ops(written)
    inputs, outputs, labelled = EXPECTED[name]
    config = read_config(model_dir)
    assert _tensors(config.input) == inputs
    assert _tensors(config.output) == outputs  # every output, none dropped
    assert [o.name for o in config.output if o.label_filename] == ([labelled] if labelled else [])
    report = json.loads((model_dir / "1" / "export_report.json").read_text())
    assert report["signature"]["labelled_output"] == labelled
    assert all(c["passed"] for c in report["verification"])
    assert {c["name"].split(" (")[0] for c in report["verification"]} >= {"onnxruntime, ORT_ENABLE_ALL"}
    if labelled is None:
        assert "do not apply" in report["signature"]["classification"]
        assert "note: no output is (N, classes)" in out
        assert report["labels"] == []
    else:
        assert len(report["labels"]) == dict((n, d) for n, _, d in outputs)[labelled][0]


def test_uint8_images_feed_raw_pixels_and_top1_is_checked(tmp_path: Path) -> None:
    """--images on a uint8 NHWC model: the images go in as 0-255 pixels (no ONNX Runtime type error), and the
    labelled folders give the labels and a top-1 agreement check."""
    src = tmp_path / "pix.onnx"
    onnx.save(uint8_nhwc(), str(src))
    rng = np.random.default_rng(0)
    for label in ("ants", "bees", "cats"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    argv = ["--onnx", str(src), "--repository", str(tmp_path / "repo"), "--images", str(tmp_path / "imgs")]
    assert main([*argv, "--layout", "NHWC"]) == 0
    report = json.loads((tmp_path / "repo" / "pix" / "1" / "export_report.json").read_text())
    assert report["labels"] == ["ants", "bees", "cats"]
    top1 = [c for c in report["verification"] if c["name"] == "top-1 agreement"]
    assert top1 and top1[0]["passed"] and top1[0]["samples"] == 9
    assert {c["name"] for c in report["verification"]} >= {"onnxruntime, ORT_DISABLE_ALL (real)"}


def test_uint8_input_refuses_mean_and_std(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "pix.onnx"
    onnx.save(uint8_nhwc(), str(src))
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    argv = ["--onnx", str(src), "--repository", str(tmp_path / "repo"), "--images", str(tmp_path / "imgs")]
    assert main([*argv, "--layout", "NHWC", "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2"]) == 2
    err = capsys.readouterr().err
    assert "'pixels' is uint8" in err and "--mean and --std do not apply" in err
    assert not (tmp_path / "repo" / "pix").exists()


def test_labels_on_a_model_without_classes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "fm.onnx"
    onnx.save(MODELS["feature_map"](), str(src))
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    assert main(["--onnx", str(src), "--repository", str(tmp_path / "repo"), "--labels", str(labels)]) == 2
    assert "no output is (N, classes) (outputs: y [-1, 8, 10, 10])" in capsys.readouterr().err


def test_each_output_is_held_to_its_own_bound() -> None:
    """A large logit next to a tiny embedding: an error in the embedding that the joint scale would hide fails
    the check, which names the output."""
    from export.verification.checks import Reference, against_oracle

    oracle = np.array([[1000.0, 0.001], [-800.0, 0.002]])
    original = oracle + np.array([1e-4, 1e-9])
    wrong = oracle + np.array([0.0, 1e-5])
    columns = (("logits", slice(0, 1)), ("embedding", slice(1, 2)))
    assert against_oracle("joint", wrong, Reference("random", oracle, oracle, original)).passed
    check = against_oracle("split", wrong, Reference("random", oracle, oracle, original, columns))
    assert not check.passed and "output 'embedding', the worst of 2 outputs" in check.detail
    assert against_oracle("split", original, Reference("random", oracle, oracle, original, columns)).passed


def test_write_model_lists_every_output_and_checks_the_labels(tmp_path: Path) -> None:
    from export.errors import ExportError
    from export.repository.writer import write_model

    src = tmp_path / "two.onnx"
    onnx.save(MODELS["logits_and_embedding"](), str(src))
    model_dir, _ = write_model(tmp_path / "repo", "two", src, list("abcde"))
    config = read_config(model_dir)
    assert _tensors(config.output) == [("logits", "TYPE_FP32", [5]), ("embedding", "TYPE_FP32", [4])]
    assert [o.name for o in config.output if o.label_filename] == ["logits"]
    with pytest.raises(ExportError, match=r"3 labels given, but output 'logits' has 5 classes"):
        write_model(tmp_path / "repo", "two", src, list("abc"))


def test_an_output_without_the_batch_axis_is_an_export_error_in_export_onnx_graph(tmp_path: Path) -> None:
    from export.emit.from_onnx import export_onnx_graph
    from export.errors import ExportError
    from tests.export.onnx_graphs import bn_stats, model

    rng = np.random.default_rng(0)
    body = "z = BatchNormalization (x, s_g, s_b, s_m, s_v)\nk = Identity (s_g)"
    graph = model(body, 12, "float[N, 5] x", "float[N, 5] z, float[5] k", **bn_stats(rng, 5, "s"))
    message = r"output 1 has shape \(5,\) while output 0 has \d+ rows; every output needs the batch axis"
    with pytest.raises(ExportError, match=message):
        export_onnx_graph(graph, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
