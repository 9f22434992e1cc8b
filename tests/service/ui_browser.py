"""Helpers for the page's browser tests: finding Chromium, launching it, and the small models they serve.

Chromium comes from the system (Debian's ``chromium`` package; Playwright's own browser download is never
used). Without it the tests are skipped with the reason, unless ``BNFOLD_REQUIRE_BROWSER=1`` (CI) makes
that a failure.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Without the background-networking flags Chromium tries to reach Google's services, which a closed network refuses.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
HOSTILE = "<img src=x onerror=alert(1)>"


def chromium_or_skip() -> str:
    """The Chromium executable (``BNFOLD_CHROMIUM``, else ``chromium`` on PATH), or skip (fail in CI) saying why.

    Called when a test module is collected, so that nothing is trained or exported for tests that cannot run."""
    found = os.environ.get("BNFOLD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found, why = None, "Playwright is not installed (pip install -e '.[dev]')"
    else:
        why = "no Chromium found (apt-get install chromium, or set BNFOLD_CHROMIUM): the browser tests did not run"
    if found and Path(found).is_file():
        return found
    if os.environ.get("BNFOLD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"BNFOLD_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why, allow_module_level=True)


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _linear_onnx(path: Path, input_shape: list[int], classes: int) -> None:
    """A tiny float32 classifier: mean over the spatial axes (for images), then a fixed linear layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features = input_shape[0]
    nodes, first = [], "input"
    if len(input_shape) == 3:
        nodes.append(helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0))
        first = "pooled"
    weight = numpy_helper.from_array(np.eye(features, classes, dtype=np.float32), "weight")
    nodes.append(helper.make_node("MatMul", [first, "weight"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def add_linear_model(repo: Path, name: str, input_shape: list[int], labels: list[str], tmp: Path) -> None:
    """Add ``name``: a tiny classifier over ``input_shape`` (e.g. [3, 4, 4] or [4]) written by bnfold's writer."""
    from export.repository.writer import write_model

    onnx_file = tmp / f"{name}.onnx"
    _linear_onnx(onnx_file, input_shape, len(labels))
    write_model(repo, name, onnx_file, labels, max_batch_size=4)


def doctor_report(version_dir: Path) -> str:
    """Put the last error-vs-bound check of the version's report ten times over its bound (return its name),
    and name its first BatchNorm layer :data:`HOSTILE` (model names cannot hold markup; reports and labels can)."""
    import json

    path = version_dir / "export_report.json"
    report: dict[str, Any] = json.loads(path.read_text())
    check = [c for c in report["verification"] if c.get("candidate")][-1]
    check["candidate"]["max"] = check["bound"] * 10
    report["fold"]["rows"][0]["bn"] = HOSTILE
    path.write_text(json.dumps(report))
    return str(check["name"])
