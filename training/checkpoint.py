"""Self-describing, pickle-free checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a directory ``<run>/checkpoints/step-NNNNNNN/`` holding

- ``model.safetensors``: the model's state dict (weights and BN running statistics);
- ``train_state.safetensors``: optimizer tensors and the torch RNG state, for resume;
- ``checkpoint.json``: how to rebuild and serve the model (model name and options, labels, input shape,
  layout and normalisation, BN statistics mode), metrics, dataset, seed, versions, time, the resume state,
  and the sha256 of both tensor files.

It is built in a hidden staging folder ``<run>/checkpoints/.step-NNNNNNN.<random>.partial`` and renamed into
place, then ``<run>/checkpoints/latest`` (a symlink) is switched to it atomically, so a crash never leaves a
half-written checkpoint or a dangling ``latest``. A kill during the write can leave the staging folder;
:func:`partial_checkpoints` finds it for the next run to remove.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from training.atomic import point_symlink, staging_dir, write_json_atomic
from training.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

FORMAT = "bnfold.checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_FILE = "checkpoint.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its directory, its JSON document and its model state dict."""

    path: Path
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    def build_model(self) -> nn.Module:
        """Rebuild the model from ``meta`` and load the weights (strict); eval mode."""
        from training.models import build_model

        model_meta = self.meta["model"]
        try:
            model = build_model(model_meta["name"], **model_meta["options"])
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {self.path / META_FILE} cannot be rebuilt: {exc}") from exc
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise CheckpointError(
                f"weights in {self.path / MODEL_FILE} do not match model {model_meta['name']!r}: "
                + " ".join(line.strip() for line in first[:3])
            ) from exc
        return model.eval()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions that matter for reproducing a run."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy

    try:
        bnfold_version = version("bnfold")
    except PackageNotFoundError:  # running from a source tree that is not installed
        bnfold_version = "unknown"
    return {
        "bnfold": bnfold_version,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in rest["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    keep: int = 2,
    tag: str = "",
) -> Path:
    """Write a checkpoint for ``step`` under ``run_dir/checkpoints`` and point ``latest`` at it.

    ``meta`` is the self-description (model, labels, input, dataset, metrics...); format, versions, time,
    file hashes and the optimizer's JSON part are added here. ``tag`` distinguishes a second checkpoint at
    the same step (the final one, with recalibrated statistics). Keeps the newest ``keep`` checkpoints.
    """
    root = run_dir / "checkpoints"
    final = root / (f"step-{step:07d}-{tag}" if tag else f"step-{step:07d}")
    if final.exists():
        raise CheckpointError(f"checkpoint {final} already exists; refusing to overwrite it")
    model_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    with staging_dir(final) as tmp:
        save_file(model_state, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        files = {MODEL_FILE: sha256_file(tmp / MODEL_FILE)}
        if optimizer is not None:
            tensors, rest = _flatten_optimizer(optimizer.state_dict())
            tensors["rng.torch"] = torch.get_rng_state()
            save_file(tensors, str(tmp / STATE_FILE), metadata={"format": FORMAT})
            files[STATE_FILE] = sha256_file(tmp / STATE_FILE)
            doc["optimizer"] = rest
        doc["versions"] = library_versions()
        doc["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        doc["files"] = files
        write_json_atomic(tmp / META_FILE, doc)
    point_symlink(root / "latest", final.name)
    _prune(root, keep)
    logger.debug("checkpoint written: %s", final)
    return final


def _prune(root: Path, keep: int) -> None:
    latest = (root / "latest").resolve().name if (root / "latest").exists() else None
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def partial_checkpoints(run_dir: Path) -> list[Path]:
    """The staging folders of checkpoint writes that never finished in ``run_dir`` (see the module docstring)."""
    root = run_dir / "checkpoints"
    return sorted(p for p in root.glob(".step-*.partial") if p.is_dir()) if root.is_dir() else []


def resolve_checkpoint_dir(path: Path) -> Path:
    """Accept a checkpoint directory, a run directory, or ``checkpoint.json``; return the checkpoint dir."""
    path = Path(path)
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    if (path / "checkpoints" / "latest").exists():
        path = path / "checkpoints" / "latest"
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not (path / META_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a bnfold checkpoint: no {META_FILE} (give a run directory or a checkpoint directory)"
        )
    return path.resolve()


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    """Read and validate ``checkpoint.json`` of a checkpoint directory."""
    meta_path = ckpt_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a bnfold checkpoint (field 'format' != {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path} has format_version {meta.get('format_version')!r}; this bnfold reads {FORMAT_VERSION}"
        )
    for field in ("model", "labels", "input", "files"):
        if field not in meta:
            raise CheckpointError(f"{meta_path} lacks the required field {field!r}")
    return meta


def _load_tensors(ckpt_dir: Path, name: str, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = ckpt_dir / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    expected = meta["files"].get(name)
    if expected is not None and sha256_file(path) != expected:
        raise CheckpointError(f"{path} is corrupt: its sha256 does not match {META_FILE}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint (directory, run directory or ``checkpoint.json``), verifying file hashes."""
    ckpt_dir = resolve_checkpoint_dir(path)
    meta = read_meta(ckpt_dir)
    return Checkpoint(ckpt_dir, meta, _load_tensors(ckpt_dir, MODEL_FILE, meta))


def load_train_state(ckpt: Checkpoint) -> tuple[dict[str, Any], torch.Tensor]:
    """The optimizer state dict and the torch RNG state saved with ``ckpt``, for resume."""
    if STATE_FILE not in ckpt.meta["files"] or "optimizer" not in ckpt.meta:
        raise CheckpointError(f"checkpoint {ckpt.path} has no training state to resume from")
    tensors = _load_tensors(ckpt.path, STATE_FILE, ckpt.meta)
    if "rng.torch" not in tensors:
        raise CheckpointError(f"{ckpt.path / STATE_FILE} lacks the RNG state")
    return _unflatten_optimizer(tensors, ckpt.meta["optimizer"]), tensors["rng.torch"]
