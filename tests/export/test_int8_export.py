"""``bnfold-export --int8``: the demo checkpoint's digits-int8, gated and served; a failed gate writes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

import export.pipeline as pipeline
from export.cli import main
from export.variants.int8 import Int8Gate
from tests.service.conftest import ServerProcess

pytestmark = pytest.mark.slow


def _listing(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(root.rglob("*"))
    }


def test_int8_variant_of_the_demo_checkpoint_is_gated_and_served(
    demo_run: Path, tmp_path: Path, digits_val: tuple[np.ndarray, np.ndarray]
) -> None:
    repo = tmp_path / "repo"
    assert main(["--checkpoint", str(demo_run), "--repository", str(repo), "--name", "digits"]) == 0
    before = _listing(repo / "digits")
    assert main(["--checkpoint", str(demo_run), "--repository", str(repo), "--name", "digits", "--int8"]) == 0
    assert _listing(repo / "digits") == before  # digits still serves float32
    report = json.loads((repo / "digits-int8" / "1" / "export_report.json").read_text())
    gate = report["int8"]["gate"]
    assert gate["passed"] and gate["agreement"] >= 0.99 and gate["accuracy_drop_points"] <= 0.5
    assert gate["validation_samples"] == len(digits_val[0]) and report["int8"]["calibration"]["method"] == "minmax"
    assert sorted(p.name for p in (repo / "digits-int8" / "1").iterdir()) == [
        "config.pbtxt", "export_report.json", "labels.txt", "model.onnx"
    ]  # fmt: skip
    server = ServerProcess(repo)
    try:
        server.wait_ready()
        x, y = digits_val
        body = {
            "inputs": [{"name": "input", "shape": [64, 1, 8, 8], "datatype": "FP32", "data": x[:64].ravel().tolist()}]
        }
        r = httpx.post(f"{server.url}/v2/models/digits-int8/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        logits = np.array(r.json()["outputs"][0]["data"]).reshape(64, -1)
        assert (logits.argmax(1) == y[:64]).mean() >= 0.95
    finally:
        server.stop()


def test_a_variant_below_the_gate_is_refused_and_nothing_is_written(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert main(["--checkpoint", str(tiny_run), "--repository", str(repo), "--name", "digits"]) == 0
    before = _listing(repo)
    impossible = Int8Gate(min_agreement=1.01)  # no variant can agree on more than 100%
    monkeypatch.setattr(pipeline, "Int8Gate", lambda: impossible)
    assert main(["--checkpoint", str(tiny_run), "--repository", str(repo), "--name", "digits", "--int8"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "agree" in err and "left unchanged" in err
    assert _listing(repo) == before
