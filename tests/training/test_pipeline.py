"""The training pipeline end to end: determinism, resume, checkpoints, failures that lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.errors import CheckpointError, TrainingDiverged
from training.pipeline import run_training

SMALL = {"model_options": {"widths": [8, 16]}, "plots": False, "progress": False}


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_bit_identical(tmp_path: Path, optimizer: str) -> None:
    common = dict(SMALL, steps=30, optimizer=optimizer, lr=0.01 if optimizer == "adamw" else 0.05, recalibrate=False)
    straight = run_training(TrainConfig(out=tmp_path / "straight", **common))
    half = run_training(TrainConfig(out=tmp_path / "split", stop_after_steps=15, **common))
    assert half.step == 15 and half.checkpoint is not None
    resumed = run_training(TrainConfig(out=tmp_path / "split", resume=half.checkpoint, **common))
    assert resumed.step == 30
    a, b = _weights(straight.checkpoint), _weights(resumed.checkpoint)  # type: ignore[arg-type]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


def test_checkpoint_is_self_describing(tiny_run: Path) -> None:
    ckpt = load_checkpoint(tiny_run)
    meta = ckpt.meta
    assert meta["model"]["name"] == "convnet" and meta["model"]["options"]["in_channels"] == 1
    assert meta["labels"] == [str(i) for i in range(10)]
    assert meta["input"]["shape"] == [1, 8, 8] and meta["input"]["layout"] == "NCHW"
    assert len(meta["input"]["normalization"]["mean"]) == 1
    assert meta["bn_statistics"]["recalibrated"] is True
    assert {"val_acc_ema", "val_acc_recalibrated"} <= meta["metrics"].keys()
    assert meta["versions"]["torch"] == torch.__version__
    model = ckpt.build_model()
    assert not model.training
    # the recalibrated statistics are the ones stored
    assert any("running_var" in k for k in ckpt.state_dict)
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"step", "epoch", "final"}


def test_mlp_trains_on_digits_with_and_without_bn(tmp_path: Path) -> None:
    for bn in (True, False):
        result = run_training(
            TrainConfig(
                out=tmp_path / str(bn),
                model="mlp",
                batch_norm=bn,
                epochs=10,
                optimizer="adamw",
                lr=0.003,
                plots=False,
                progress=False,
            )
        )
        assert result.val_acc > 0.80, f"mlp batch_norm={bn} reached only {result.val_acc}"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    good = run_training(TrainConfig(out=tmp_path, steps=40, stop_after_steps=22, recalibrate=False, **SMALL))
    assert good.checkpoint is not None
    before = {k: v.clone() for k, v in _weights(good.checkpoint).items()}
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        run_training(
            TrainConfig(
                out=tmp_path,
                steps=200,
                resume=good.checkpoint,
                lr=1e6,
                momentum=0.0,
                weight_decay=0.0,
                recalibrate=False,
                **SMALL,
            )
        )
    latest = load_checkpoint(tmp_path)
    for k, v in latest.state_dict.items():
        assert torch.isfinite(v.float()).all(), f"{k} is not finite in the kept checkpoint"
    assert latest.path.name == good.checkpoint.name
    assert all(torch.equal(before[k], v) for k, v in latest.state_dict.items())


def test_corrupt_and_incompatible_checkpoints_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(load_checkpoint(tiny_run).path, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(copy)
    with pytest.raises(CheckpointError, match="trained with model='convnet'"):
        run_training(TrainConfig(out=tmp_path / "x", model="mlp", resume=tiny_run, **SMALL))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (copy / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(copy)


def test_resume_with_mismatched_weights_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="do not match"):
        run_training(
            TrainConfig(out=tmp_path, resume=tiny_run, model_options={"widths": [8, 32]}, plots=False, progress=False)
        )


def _cli(*args: str, cwd: Path, env: dict[str, Path] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **{k: str(v) for k, v in (env or {}).items()}}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=cwd, env=environ
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagefolder", "--data-dir", "/nonexistent/x"], "/nonexistent/x does not exist"),
        (["--model", "vgg"], "invalid choice: 'vgg'"),
        (["--config", "missing.toml"], "config file missing.toml does not exist"),
        (["--model-option", "dropout=0.1"], "no option(s) dropout"),
        (["--batch-size", "1"], "batch_size: Input should be greater than or equal to 2"),
        (["--resume", "/nonexistent/run"], "does not exist"),
    ],
)
def test_cli_errors_are_one_readable_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _cli(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def _tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under ``root``, folders included: (kind, size, mtime in ns)."""
    listing = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        listing[str(p.relative_to(root))] = (kind, st.st_size if kind == "file" else 0, st.st_mtime_ns)
    return listing


def test_cli_dry_run_touches_no_file_and_reads_toml_config(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('model = "mlp"\nbatch_size = 32\n[model_options]\nhidden = 20\n')
    # caches that a library could fill go under tmp_path too (torch's own $TMPDIR/torchinductor_<user> stays out)
    env = {name: tmp_path / name.lower() for name in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR")}
    for folder in env.values():
        folder.mkdir()
    before = _tree(tmp_path)
    proc = _cli("--config", "run.toml", "--dry-run", "--out", "runs/dry", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stderr and "model mlp" not in proc.stderr
    assert "training mlp on digits" in proc.stderr  # the TOML file was read
    assert _tree(tmp_path) == before  # not even the run folder (or its parent) was made
    help_text = _cli("--help", cwd=tmp_path).stdout
    assert "--recalibrate-batches" in help_text and "examples:" in help_text


def test_a_new_run_never_mixes_into_an_old_one(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from training.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        run_training(TrainConfig(out=run, steps=2, **SMALL))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    result = run_training(TrainConfig(out=run, steps=2, overwrite=True, **SMALL))
    assert result.checkpoint is not None and result.checkpoint.parent == run / "checkpoints"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000002", "step-0000002-final"]
