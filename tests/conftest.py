"""Shared fixtures: small real models, data and trained checkpoints, built once per session."""

from __future__ import annotations

import inspect
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


# The fast tier (``make test-fast``) leaves out every test that starts a server process or runs a training of
# its own (the shared ``tiny_run`` is one short run per session); they are marked ``heavy`` here, by the
# fixtures they use or the calls they make, so a new test is classified without anyone remembering to.
HEAVY_FIXTURES = {"server", "checkpoints", "demo_run", "user", "slow_repo"}
HEAVY_CALLS = ("ServerProcess(", "run_training(", "subprocess.", "bnfold-train", "torchrun")
# whole files of end-to-end runs and of training runs (experiments, several processes, the training loop)
HEAVY_FILES = ("tests/e2e/", "tests/training/test_experiments", "tests/training/test_distributed.py",
               "tests/training/test_pipeline.py")  # fmt: skip


def _is_heavy(item: pytest.Item) -> bool:
    if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    where = Path(str(item.path)).resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
    if where.startswith(HEAVY_FILES):
        return True
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return False
    return any(call in source for call in HEAVY_CALLS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_heavy(item):
            item.add_marker(pytest.mark.heavy)
