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
