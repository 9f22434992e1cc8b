"""Checkpoint -> model repository: every registry model, Triton's config schema, atomic versions, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from export import export_checkpoint
from export.errors import ExportError
from export.verification.checks import ort_session
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.data import load_dataset
from training.errors import CheckpointError
from training.models import MODEL_NAMES
from training.pipeline import run_training

MODEL_OPTIONS = {
    "mlp": {"hidden": 32},
    "convnet": {"widths": [8, 16]},
    "resnet": {"depth": 8, "width": 8},
    "resnet-preact": {"depth": 8, "width": 8, "preact": True},
}


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``, folders and hidden entries included: a file's sha256, or "folder"."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for key, options in MODEL_OPTIONS.items():
        model = key.split("-")[0]
        run = tmp_path_factory.mktemp(key)
        run_training(TrainConfig(model=model, model_options=options, out=run, steps=25, plots=False, progress=False))
        out[key] = run
    return out


def test_registry_is_covered() -> None:
    assert {k.split("-")[0] for k in MODEL_OPTIONS} == set(MODEL_NAMES)


@pytest.mark.parametrize("key", list(MODEL_OPTIONS))
def test_every_registry_model_exports_with_full_agreement(
    key: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    written = export_checkpoint(checkpoints[key], tmp_path / "repo", name=key)
    report = json.loads((written.path / "export_report.json").read_text())
    agreement = next(c for c in report["verification"] if c["name"] == "top-1 agreement")
    assert agreement["passed"] and "100.00%" in agreement["detail"]
    assert agreement["samples"] == load_checkpoint(checkpoints[key]).meta["dataset"]["val_samples"]
    assert report["onnx_ops"].get("BatchNormalization", 0) == 0
    assert report["fold"]["totals"]["batchnorm_layers"] > 0
    # the service's view: the ONNX file alone, with its metadata, classifies the validation split
    proto = onnx.load(str(written.path / "model.onnx"))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props if p.key.startswith("bnfold.")}
    assert meta["bnfold.labels"] == [str(i) for i in range(10)]
    assert meta["bnfold.input"]["shape"] == [1, 8, 8] and meta["bnfold.model"]["version"] == 1
    ckpt = load_checkpoint(checkpoints[key])
    assert meta["bnfold.source_checkpoint"]["sha256"] == ckpt.meta["files"]["model.safetensors"]
    data = load_dataset("digits")
    logits = ort_session(written.path / "model.onnx").run(None, {"input": data.val_x.numpy()})[0]
    accuracy = float((logits.argmax(1) == data.val_y.numpy()).mean())
    assert accuracy == pytest.approx(ckpt.meta["metrics"]["val_acc"], abs=1e-9)


def test_config_pbtxt_parses_with_tritons_schema(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    first = export_checkpoint(checkpoints["convnet"], repo, name="digits", max_batch_size=32)
    second = export_checkpoint(checkpoints["convnet"], repo, name="digits", max_batch_size=32)
    assert (first.version, second.version) == (1, 2)
    config = text_format.Parse((repo / "digits" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "digits" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert config.input[0].name == "input" and list(config.input[0].dims) == [1, 8, 8]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert config.output[0].name == "logits" and list(config.output[0].dims) == [10]
    assert config.output[0].label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert (repo / "digits" / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert sorted(p.name for p in (repo / "digits").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert sorted(p.name for p in (repo / "digits" / "2").iterdir()) == [
        "config.pbtxt",
        "export_report.json",
        "labels.txt",
        "model.onnx",
    ]
    mode = (repo / "digits" / "2" / "model.onnx").stat().st_mode
    assert mode & 0o044 == 0o044, "the repository must be readable by the serving container's user"


def test_bad_checkpoints_leave_the_repository_unchanged(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "repo"
    export_checkpoint(checkpoints["mlp"], repo, name="m")
    before = _snapshot(repo)
    with pytest.raises(CheckpointError, match="does not exist"):
        export_checkpoint(tmp_path / "missing", repo, name="m")
    broken = tmp_path / "broken"
    shutil.copytree(load_checkpoint(checkpoints["mlp"]).path, broken)
    meta = json.loads((broken / "checkpoint.json").read_text())
    meta["model"]["name"] = "transformer"
    (broken / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown model 'transformer'"):
        export_checkpoint(broken, repo, name="m")
    meta["model"]["name"] = "mlp"
    meta["model"]["options"]["hidden"] = 64
    (broken / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match model 'mlp'"):
        export_checkpoint(broken, repo, name="m")
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        export_checkpoint(broken, repo, name="m")
    with pytest.raises(ExportError, match="is not allowed"):
        export_checkpoint(checkpoints["mlp"], repo, name="../escape")
    assert _snapshot(repo) == before


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "export", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_killed_export_leaves_no_partial_version(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_checkpoint(checkpoints["convnet"], repo, name="digits")
    before = _snapshot(repo)
    proc = _cli("--checkpoint", str(checkpoints["convnet"]), "--repository", str(repo), "--name", "digits")
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") for p in repo.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "export ended before it could be interrupted"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    versions = sorted(p.name for p in (repo / "digits").iterdir() if p.name.isdigit())
    assert versions == ["1"]
    assert {k: v for k, v in _snapshot(repo).items() if ".partial" not in k} == before
    # the next export removes what the killed one left and writes version 2
    done = _cli("--checkpoint", str(checkpoints["convnet"]), "--repository", str(repo), "--name", "digits")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert "folded-into-preceding" in out and "top-1 agreement" in out and "version 2" in out
    assert sorted(p.name for p in (repo / "digits").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    proc = _cli("--checkpoint", str(tmp_path / "nope"), "--repository", str(tmp_path / "repo"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bnfold-export: error: ") and "does not exist" in err and "left unchanged" in err
    assert list(tmp_path.iterdir()) == []  # not even the repository folder


def test_exported_model_matches_checkpoint_in_numpy(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    written = export_checkpoint(checkpoints["resnet-preact"], tmp_path / "repo", name="r")
    model = load_checkpoint(checkpoints["resnet-preact"]).build_model()
    import torch

    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort_session(written.path / "model.onnx").run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


class _Killed(BaseException):
    """Stands for the process dying at that point (BaseException, as KeyboardInterrupt or SystemExit would be)."""


KILL_POINTS = {
    "while exporting, before any file is written": ("export.pipeline", "_candidate", 0),
    "between files: after model.onnx, before export_report.json": ("export.pipeline", "write_json_atomic", 0),
    "between the shared files: labels.txt written, config.pbtxt not": (
        "export.repository.writer",
        "write_bytes_atomic",
        3,
    ),
    "at the atomic swap": ("export.repository.writer", "_swap_in", 0),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
@pytest.mark.parametrize("new_name", [False, True], ids=["existing-name", "new-name"])
def test_an_export_interrupted_anywhere_leaves_the_repository_byte_for_byte(
    point: str, new_name: bool, checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    repo = tmp_path / "repo"
    export_checkpoint(checkpoints["mlp"], repo, name="m")
    before = _snapshot(repo)
    module_name, attr, calls_before = KILL_POINTS[point]
    module = importlib.import_module(module_name)
    real, seen = getattr(module, attr), []

    def dies_there(*args: object, **kwargs: object) -> object:
        seen.append(attr)
        if len(seen) > calls_before:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, dies_there)
    with pytest.raises(_Killed):
        export_checkpoint(checkpoints["mlp"], repo, name="n" if new_name else "m", max_batch_size=7)
    assert _snapshot(repo) == before
    monkeypatch.undo()
    written = export_checkpoint(checkpoints["mlp"], repo, name="m", max_batch_size=7)  # after: all of it at once
    assert written.version == 2 and "max_batch_size: 7" in (repo / "m" / "config.pbtxt").read_text()
    assert (repo / "m" / "config.pbtxt").read_bytes() == (repo / "m" / "2" / "config.pbtxt").read_bytes()
    assert {k: v for k, v in _snapshot(repo).items() if k.startswith("m/1")} == {
        k: v for k, v in before.items() if k.startswith("m/1")
    }


def test_fp16_gets_its_own_name_whatever_name_says(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_checkpoint(checkpoints["convnet"], repo, name="digits")
    before = _snapshot(repo / "digits")
    written = export_checkpoint(checkpoints["convnet"], repo, name="digits", fp16=True)
    assert written.model_dir == repo / "digits-fp16" and written.version == 1
    assert _snapshot(repo / "digits") == before  # digits still serves its float32 version 1, untouched
