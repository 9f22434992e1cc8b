"""MNIST from IDX files: the experiments run on it, at the paper's scale by default, with a progress ETA."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.experiments import fig1, popstats, runner
from training.experiments.common import Settings

MNIST_QUICK = (sys.executable, "-m", "training.experiments", "--quick", "--dataset", "mnist", "--data-dir")


def _idx(data: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    return header + data.astype(np.uint8).tobytes()


def _write_mnist(root: Path, train: int, test: int) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28))
        for digit in range(10):  # a bright column per class, so the task is learnable
            images[labels == digit, :, 2 + 2 * digit] = 255
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images, 2051))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels, 2049))


def test_quick_experiments_run_on_mnist_idx_files_and_log_the_plan(tmp_path: Path) -> None:
    _write_mnist(tmp_path, train=240, test=60)
    out = tmp_path / "out"
    proc = subprocess.run(
        [*MNIST_QUICK, str(tmp_path), "--seeds", "1", "--jobs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training steps planned in 3 runs" in proc.stderr
    record = json.loads((out / "experiments.json").read_text())
    assert record["settings"]["dataset"] == "mnist" and record["settings"]["seeds"] == [0]
    fig1_curves = record["sections"][0]["results"][0]["curves"]
    assert fig1_curves["with BN"]["steps"] == [10, 20, 30, 40]
    assert "on mnist" in (out / "report.md").read_text()


def test_mnist_default_is_the_papers_scale(tmp_path: Path) -> None:
    settings = Settings(tmp_path, dataset="mnist", data_dir=tmp_path)
    data = type("Data", (), {"train_x": torch.zeros(60_000, 1, 1, 1)})()
    p = fig1.plan(settings, data)  # type: ignore[arg-type]
    assert (p.steps, p.batch_size) == (50_000, 60)  # Figure 1: 50k steps of 60 images
    assert popstats.plan(settings, data).samples == 60_000  # type: ignore[arg-type]


def test_missing_mnist_files_are_named(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*MNIST_QUICK, str(tmp_path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "lacks train-images-idx3-ubyte" in proc.stderr


def test_progress_logs_an_estimate_of_the_time_left(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger=runner.__name__):
        progress = runner.Progress(total=1000, runs=2, workers=1)
        progress.tick(250)
        progress.close()
    assert "1000 training steps planned in 2 runs" in caplog.text
    assert "250/1000 steps (25%), about" in caplog.text and "left" in caplog.text
