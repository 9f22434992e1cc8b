"""Reading the model repository (Triton layout) that ``bnfold-export`` writes, without protobuf or torch."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)
# A version as the v2 API addresses it (and as bnfold-export writes it): 1, 2, ..., no sign or leading zero.
VERSION = re.compile(r"[1-9][0-9]{0,17}", re.ASCII)
_skipped: set[Path] = set()  # version folders already warned about (the repository is scanned often)


@dataclass(frozen=True)
class ModelConfigInfo:
    """The parts of config.pbtxt the server uses."""

    platform: str
    max_batch_size: int
    max_queue_delay_us: int


def model_names(repository: Path) -> list[str]:
    """Folders of the repository that look like models (hold a config.pbtxt or a numeric version)."""
    if not repository.is_dir():
        return []
    names = []
    for p in sorted(repository.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and ((p / "config.pbtxt").is_file() or versions(p)):
            names.append(p.name)
    return names


def versions(model_dir: Path) -> list[int]:
    """Version folders (named as :data:`VERSION`) holding a model.onnx, ascending; hidden partial exports are
    ignored, and a folder such as ``01`` or ``0``, which no request could address, is skipped with a warning."""
    if not model_dir.is_dir():
        return []
    found = []
    for p in model_dir.iterdir():
        if not (p / "model.onnx").is_file():
            continue
        if VERSION.fullmatch(p.name):
            found.append(int(p.name))
        elif p.name.isascii() and p.name.isdigit() and p not in _skipped:
            _skipped.add(p)
            logger.warning("%s: skipped; a version folder is named 1, 2, ... (no leading zero, not 0)", p)
    return sorted(found)


def _int_field(text: str, name: str, default: int) -> int:
    m = re.search(rf"^\s*{name}\s*:\s*(\d+)", text, re.MULTILINE)
    return int(m.group(1)) if m else default


def read_config(model_dir: Path) -> ModelConfigInfo:
    """Platform, max_batch_size and the dynamic batching delay from config.pbtxt (defaults when absent)."""
    path = model_dir / "config.pbtxt"
    text = path.read_text() if path.is_file() else ""
    platform = re.search(r'^\s*platform\s*:\s*"([^"]*)"', text, re.MULTILINE)
    return ModelConfigInfo(
        platform=platform.group(1) if platform else "onnxruntime_onnx",
        max_batch_size=_int_field(text, "max_batch_size", 64),
        max_queue_delay_us=_int_field(text, "max_queue_delay_microseconds", 500),
    )


def read_labels(model_dir: Path) -> list[str]:
    """labels.txt, one label per line, or [] when absent."""
    path = model_dir / "labels.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
