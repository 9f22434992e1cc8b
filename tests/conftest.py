"""Shared fixtures: small real models, data and trained checkpoints, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short convnet-on-digits training run (real data, real checkpoint), shared by tests that read it."""
    from training.config import TrainConfig
    from training.pipeline import run_training

    out = tmp_path_factory.mktemp("tiny_run")
    config = TrainConfig(out=out, epochs=2, model_options={"widths": [8, 16]}, plots=False, progress=False)
    run_training(config)
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``make demo`` trains: the default convnet on digits, every default (about 98% accurate); shared by
    the tests that need a model as good as the demo's (the int8 gate, the page's digit)."""
    from training.config import TrainConfig
    from training.pipeline import run_training

    out = tmp_path_factory.mktemp("demo_run")
    run_training(TrainConfig(out=out, plots=False, progress=False))
    return out


@pytest.fixture(scope="session")
def model_repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding ``digits`` version 1, exported from ``tiny_run`` by the real exporter."""
    from export import export_checkpoint

    repo = tmp_path_factory.mktemp("repo")
    export_checkpoint(tiny_run, repo, name="digits", max_batch_size=16)
    return repo


@pytest.fixture(scope="session")
def digits_val() -> tuple[object, object]:
    """The digits validation split as numpy (normalised inputs, labels)."""
    from training.data import load_dataset

    data = load_dataset("digits")
    return data.val_x.numpy(), data.val_y.numpy()
