"""Loading one model version: every failure is a ModelLoadError with a one-line message."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from export.repository.writer import write_model
from service.model import ModelLoadError, load_version


def flatten_model(repository: Path, tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, tmp_path / "m.onnx")
    model_dir, _ = write_model(repository, "flat", tmp_path / "m.onnx", list("abcd"))
    return model_dir


def test_an_onnx_runtime_error_without_a_message_is_a_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, defect 4: ``str(exc).strip().splitlines()[0]`` raised IndexError on an empty message."""
    import onnxruntime as ort

    model_dir = flatten_model(tmp_path / "repo", tmp_path)
    loaded = load_version(model_dir, 1, "cpu", 1)
    assert loaded.labels == list("abcd") and loaded.config is not None
    assert loaded.config.max_batch_size == loaded.max_batch_size == 64  # the ModelConfig message, for its fields

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError()

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with pytest.raises(ModelLoadError, match=r"ONNX Runtime cannot load .*/flat/1/model\.onnx: RuntimeError$"):
        load_version(model_dir, 1, "cpu", 1)


def test_a_malformed_config_is_a_load_error_naming_file_and_field(tmp_path: Path) -> None:
    """config.pbtxt was read with regular expressions that fell back to defaults: a typo served max batch 64."""
    model_dir = flatten_model(tmp_path / "repo", tmp_path)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_sise: 8"))
    with pytest.raises(ModelLoadError, match=r"flat/config\.pbtxt: .*no field named \"max_batch_sise\""):
        load_version(model_dir, 1, "cpu", 1)


class Recording:
    """A session that records each run's name before running it."""

    def __init__(self, inner: Any, name: str, runs: list[str]) -> None:
        self.inner, self.name, self.runs = inner, name, runs

    def run(self, names: Any, feeds: Any) -> Any:
        self.runs.append(self.name)
        return self.inner.run(names, feeds)


@pytest.mark.parametrize("buckets", ["off", "1,4,64"])
def test_a_lone_run_goes_to_the_lone_request_session_and_answers_the_same(
    tmp_path: Path, buckets: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``run(x, lone=True)`` runs on the lone-request session (padded to buckets the same way) and gives the
    serving session's answer; without a lone-request session it runs on the serving session."""
    import numpy as np

    model_dir = flatten_model(tmp_path / "repo", tmp_path)
    with caplog.at_level(logging.INFO, logger="service.model"):
        model = load_version(model_dir, 1, "cpu", 1, lone_threads=2, batch_buckets=buckets)
    assert model.lone_session is not None
    assert "lone-request session: 2 threads, spinning always)" in caplog.text  # its cost, said at load
    runs: list[str] = []
    model.session = Recording(model.session, "serving", runs)
    model.lone_session = Recording(model.lone_session, "lone", runs)
    x = (np.arange(12, dtype=np.float32).reshape(3, 1, 2, 2),)
    served, lone = model.run(x), model.run(x, lone=True)
    np.testing.assert_array_equal(lone[0], served[0])
    np.testing.assert_array_equal(served[0], x[0].reshape(3, 4))
    model.lone_session = None
    model.run(x, lone=True)
    assert runs == ["serving", "lone", "serving"]
