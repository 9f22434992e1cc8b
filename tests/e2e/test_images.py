"""Each image's Python requirements install in a clean virtual environment; serve's without torch.

These are the same files the Dockerfiles install. pip reaches the same package index the image build
would (here: the machine's configured index and local wheels).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.e2e.compose import ROOT


def _venv_with(requirements: Path, where: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--requirement", str(requirements)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return python


@pytest.mark.slow
def test_serve_requirements_install_and_serve_imports_without_torch(tmp_path: Path, model_repo: Path) -> None:
    python = _venv_with(ROOT / "docker" / "requirements-serve.txt", tmp_path / "venv")
    code = f"""
import importlib.util, sys
assert importlib.util.find_spec("torch") is None, "torch is installed in the serving environment"
from service.app import create_app
from service.settings import Settings
from starlette.routing import Route
app = create_app(Settings(repository={str(model_repo)!r}))
create_app(Settings(repository={str(model_repo)!r}, tracing=True))  # BNFOLD_TRACING's packages are in the image
print("ok", sorted(r.path for r in app.routes if isinstance(r, Route))[:1])
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # exactly as the image: service/ on PYTHONPATH, no bnfold install
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr


@pytest.mark.slow
def test_train_requirements_install_and_cli_runs(tmp_path: Path) -> None:
    python = _venv_with(ROOT / "docker" / "requirements-train.txt", tmp_path / "venv")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(python), "-m", "training", "--dry-run", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([str(python), "-m", "export", "--help"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "--checkpoint" in proc.stdout
    assert sys.executable != str(python)
