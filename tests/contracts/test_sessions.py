"""The one ONNX Runtime session factory and the one CUDA probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from contracts.sessions import CPU, CUDA, open_session, probe_cuda, session_options


def _relu() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()
    )


def test_options_carry_level_threads_and_entries() -> None:
    plain = session_options("disable_all")
    assert plain.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    served = session_options("enable_all", intra_op_threads=2, config_entries={"session.intra_op.allow_spinning": "0"})
    assert served.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert served.intra_op_num_threads == 2
    assert served.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(ValueError, match="expected one of disable_all, enable_all"):
        session_options("basic")


def test_open_session_runs_bytes_and_files_on_the_cpu(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(_relu())
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    for model in (_relu(), tmp_path / "m.onnx"):
        session = open_session(model)
        assert session.get_providers() == [CPU]
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x, 0))


def test_probe_counts_only_a_session_that_really_runs_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu lists CUDA on machines without a GPU, and its session falls back to the CPU there."""

    class FellBack:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def get_providers(self) -> list[str]:
            return [CPU]

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    assert probe_cuda(_relu()) is None

    class Failed(FellBack):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(ort, "InferenceSession", Failed)
    assert probe_cuda(_relu()) is None

    class OnCuda(FellBack):
        def get_providers(self) -> list[str]:
            return [CUDA, CPU]

    monkeypatch.setattr(ort, "InferenceSession", OnCuda)
    assert isinstance(probe_cuda(_relu()), OnCuda)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert probe_cuda(_relu()) is None  # not even asked for
