"""docker-compose.yml: valid against the Compose Specification, and wired as the pipeline needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.compose import ROOT, load

BIN = Path(sys.executable).parent


def test_compose_files_validate_against_the_compose_spec_schema() -> None:
    proc = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
            str(ROOT / "docker-compose.gpu.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_validation_catches_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  serve:\n    depends_on:\n      export:\n        condition: when_it_feels_like_it\n")
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0


def test_pipeline_wiring() -> None:
    services = load()["services"]
    assert set(services) == {"train", "export", "serve"}
    assert services["export"]["depends_on"] == {"train": {"condition": "service_completed_successfully"}}
    assert services["serve"]["depends_on"] == {"export": {"condition": "service_completed_successfully"}}
    assert services["train"]["restart"] == "no" and services["export"]["restart"] == "no"
    assert services["serve"]["restart"] == "unless-stopped"
    health = services["serve"]["healthcheck"]
    assert "healthcheck.py" in " ".join(health["test"]) and health["start_period"]
    assert "runs:/data/runs" in services["train"]["volumes"]
    assert "runs:/data/runs:ro" in services["export"]["volumes"] and "models:/models" in services["export"]["volumes"]
    assert services["serve"]["volumes"] == ["models:/models:ro"]
    assert services["serve"]["ports"] == ["${BNFOLD_PORT:-8000}:8000", "${BNFOLD_GRPC_PORT:-8001}:8001"]
    assert set(load()["volumes"]) == {"runs", "models"}
    assert services["serve"]["build"]["dockerfile"] == "docker/serve.Dockerfile"
    assert services["train"]["build"]["dockerfile"] == "docker/train.Dockerfile"


def test_gpu_override_reserves_gpus_for_serve_and_train() -> None:
    gpu = load("docker-compose.gpu.yml")["services"]
    for name in ("serve", "train"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert gpu["serve"]["environment"]["BNFOLD_PROVIDERS"] == "cuda"
