"""Run folders that heal: a run removes the partial checkpoints a killed run left, at start and on resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.pipeline import run_training

SMALL = {"model_options": {"widths": [8, 16]}, "plots": False, "progress": False, "recalibrate": False}

# Runs bnfold-train with save_file slowed down: once the model file of step STEP's checkpoint is written into
# its staging folder, the process says so on stdout and sleeps, so the test can kill it in mid-write.
KILLABLE = """
import sys, time
import training.checkpoint as checkpoint
from training.cli import main

real, step = checkpoint.save_file, sys.argv.pop(1)
def save_then_wait(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    if f".step-{step}." in filename:
        print("writing", flush=True)
        time.sleep(120)
checkpoint.save_file = save_then_wait
sys.exit(main(sys.argv[1:]))
"""


def _leftover(run: Path, step: int) -> Path:
    """What a kill during a checkpoint write leaves: a staging folder holding part of the files."""
    partial = run / "checkpoints" / f".step-{step:07d}.k2j8x_1q.partial"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half of a file")
    return partial


def _partials(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".partial"))


def test_a_new_run_removes_a_leftover_and_is_not_refused_for_it(tmp_path: Path) -> None:
    leftover = _leftover(tmp_path, 2)
    result = run_training(TrainConfig(out=tmp_path, steps=2, **SMALL))  # no --resume, no --overwrite needed
    assert not leftover.exists()
    assert result.checkpoint is not None and result.checkpoint.parent == tmp_path / "checkpoints"
    assert _partials(tmp_path) == []


def test_a_resumed_run_removes_a_leftover(tmp_path: Path) -> None:
    first = run_training(TrainConfig(out=tmp_path, steps=4, stop_after_steps=2, **SMALL))
    leftover = _leftover(tmp_path, 4)
    resumed = run_training(TrainConfig(out=tmp_path, steps=4, resume=first.checkpoint, **SMALL))
    assert resumed.step == 4 and not leftover.exists()
    assert _partials(tmp_path) == []


def test_a_dry_run_leaves_a_leftover_alone(tmp_path: Path) -> None:
    leftover = _leftover(tmp_path, 2)
    run_training(TrainConfig(out=tmp_path, dry_run=True, **SMALL))
    assert leftover.is_dir()  # a dry run touches no file, not even to heal


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_training_killed_during_a_checkpoint_write_heals_on_resume(tmp_path: Path) -> None:
    first = run_training(TrainConfig(out=tmp_path, steps=4, stop_after_steps=2, **SMALL))
    args = ["--steps", "4", "--no-recalibrate", "--no-plots", "--model-option", "widths=[8,16]"]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, "0000004", *args, "--resume", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    left = _partials(tmp_path)
    assert len(left) == 1 and left[0].startswith(".step-0000004.")  # the kill left half a checkpoint
    assert load_checkpoint(tmp_path).path.name == first.checkpoint.name  # type: ignore[union-attr]

    resumed = run_training(TrainConfig(out=tmp_path, steps=4, resume=first.checkpoint, **SMALL))
    assert resumed.step == 4 and _partials(tmp_path) == []
    assert load_checkpoint(tmp_path).meta["step"] == 4
