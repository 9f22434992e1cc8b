"""Reading docker-compose.yml the way Compose does, so tests run exactly what the containers run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def load(name: str = "docker-compose.yml") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return doc


def interpolate(value: str, env: dict[str, str]) -> str:
    """``${VAR:-default}`` and ``${VAR}`` substitution (no nesting, as this compose file uses)."""
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def service_env(service: str, env: dict[str, str] | None = None) -> dict[str, str]:
    raw = load()["services"][service].get("environment", {})
    return {k: interpolate(str(v), env or {}) for k, v in raw.items()}
