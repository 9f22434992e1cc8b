"""The Dockerfiles pass hadolint with nothing left unexplained, and keep the promises the README makes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.compose import ROOT

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_hadolint_is_clean(dockerfile: Path) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), str(dockerfile)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    # every ignore carries its reason on the line above
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#"), f"{dockerfile.name}:{i + 1} ignores a rule without a reason"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "hadolint"), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_images_are_pinned_non_root_and_serve_has_no_torch() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        for base in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
            assert base in ("base", "build") or re.search(r":\d", base), f"{dockerfile.name}: unpinned base {base}"
        assert "USER 10001" in text
    serve = (ROOT / "docker" / "serve.Dockerfile").read_text()
    assert "HEALTHCHECK" in serve and "/v2/health/ready" in (ROOT / "docker/entrypoints/healthcheck.py").read_text()
    assert "COPY training" not in serve and "COPY export" not in serve
    requirements = (ROOT / "docker" / "requirements-serve.txt").read_text().splitlines()
    assert not [line for line in requirements if line.startswith("torch")]
    for name in ("requirements-serve.txt", "requirements-train.txt"):
        for line in (ROOT / "docker" / name).read_text().splitlines():
            if line and not line.startswith("#"):
                assert "==" in line, f"{name}: {line} is not pinned"


def test_serve_image_exposes_the_ports_its_server_listens_on() -> None:
    """The serve image turns gRPC on beside HTTP and EXPOSEs both ports (gRPC was on in Kubernetes only)."""
    serve = (ROOT / "docker" / "serve.Dockerfile").read_text()
    env = dict(re.findall(r"\b(BNFOLD_\w+)=(\S+)", "\n".join(re.findall(r"^ENV .*$", serve, re.MULTILINE))))
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", serve, re.MULTILINE) for p in line.split()}
    assert exposed == {int(env["BNFOLD_PORT"]), int(env["BNFOLD_GRPC_PORT"])}
