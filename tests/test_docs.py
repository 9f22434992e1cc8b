"""The README tells the truth about settings and commands."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_service_setting_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"`BNFOLD_{name.upper()}`" in README, f"BNFOLD_{name.upper()} is missing from the README"


def test_the_two_commands_are_documented() -> None:
    assert "make demo" in README and "make test" in README


def test_compose_variables_are_documented() -> None:
    import re

    compose = (Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text()
    compose += (Path(__file__).resolve().parents[1] / "docker-compose.gpu.yml").read_text()
    for var in set(re.findall(r"\$\{(\w+)", compose)):
        assert var in README, f"{var} (docker-compose) is missing from the README"
