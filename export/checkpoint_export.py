"""``export_checkpoint``: a training checkpoint in, one new verified model version in the repository out.

Reads only what training wrote (``checkpoint.json`` + ``model.safetensors``); rebuilds the checkpoint's
dataset for real verification samples and the top-1 agreement check on the whole validation split.
On any failure the repository is left exactly as it was.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.onnx_export import ExportReport, export_onnx
from export.repository import TensorSpec, check_model_name, new_version, render_config, write_model_files
from training.atomic import write_json_atomic
from training.checkpoint import MODEL_FILE, Checkpoint, library_versions, load_checkpoint
from training.data import Dataset, load_dataset
from training.errors import BnfoldError

logger = logging.getLogger(__name__)


@dataclass
class VersionWritten:
    """Where the new version went and the report that proved it."""

    model_dir: Path
    version: int
    report: ExportReport

    @property
    def path(self) -> Path:
        return self.model_dir / str(self.version)


def _dataset(ckpt: Checkpoint, data_dir: Path | None) -> Dataset:
    info = ckpt.meta.get("dataset") or {}
    if not info.get("name"):
        raise ExportError(f"{ckpt.path} names no dataset; verification needs its validation split")
    try:
        data = load_dataset(
            info["name"],
            data_dir=data_dir or (Path(info["data_dir"]) if info.get("data_dir") else None),
            image_size=info.get("image_size"),
            val_fraction=info.get("val_fraction", 0.2),
            seed=info.get("seed", 0),
            synthetic_samples=info.get("synthetic_samples", 2000),
            synthetic_classes=info.get("synthetic_classes", 4),
        )
    except BnfoldError as exc:
        raise ExportError(
            f"cannot rebuild the checkpoint's dataset for verification ({exc}); pass --data-dir if it moved"
        ) from exc
    stored = ckpt.meta["input"]["normalization"]
    if not all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(stored["mean"], data.normalization.mean, strict=True)):
        logger.warning("the dataset's normalisation differs from the checkpoint's: the data changed since training")
    return data


def default_name(ckpt: Checkpoint) -> str:
    """``<model>-<dataset>``, e.g. convnet-digits."""
    return f"{ckpt.meta['model']['name']}-{(ckpt.meta.get('dataset') or {}).get('name', 'custom')}"


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    *,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 500,
    fp16: bool = False,
    data_dir: Path | None = None,
) -> VersionWritten:
    """Fold, export and verify ``checkpoint``, then add it as the next version of ``name`` in ``repository``."""
    ckpt = load_checkpoint(checkpoint)
    name = check_model_name(name or default_name(ckpt) + ("-fp16" if fp16 else ""))
    if max_batch_size < 1:
        raise ExportError(f"max_batch_size must be at least 1, got {max_batch_size}")
    model = ckpt.build_model()
    data = _dataset(ckpt, data_dir)
    shape = tuple(ckpt.meta["input"]["shape"])
    if data.input_shape != shape:
        raise ExportError(f"the dataset yields inputs of shape {data.input_shape}, the checkpoint expects {shape}")
    labels = list(ckpt.meta["labels"])
    input_meta = {"name": "input", **ckpt.meta["input"]}
    metadata: dict[str, Any] = {
        "bnfold.model": {"name": ckpt.meta["model"]["name"], "options": ckpt.meta["model"]["options"]},
        "bnfold.labels": labels,
        "bnfold.input": input_meta,
        "bnfold.output": {"name": "logits", "kind": "logits", "classes": len(labels)},
        "bnfold.source_checkpoint": {"path": str(ckpt.path), "sha256": ckpt.meta["files"][MODEL_FILE]},
        "bnfold.versions": library_versions(),
        "bnfold.precision": "float16" if fp16 else "float32",
    }
    model_dir = repository / name
    with new_version(repository, name) as (staging, version):
        metadata["bnfold.model"]["version"] = version
        metadata["bnfold.model"]["repository_name"] = name
        example = (data.val_x[:2].clone(),)
        report = export_onnx(
            model,
            example,
            staging / "model.onnx",
            metadata=metadata,
            samples=data.val_x,
            validation=data.val_x,
            fp16=fp16,
        )
        write_json_atomic(
            staging / "export_report.json",
            {
                **report.to_dict(),
                "path": f"{name}/{version}/model.onnx",
                "model": metadata["bnfold.model"],
                "labels": labels,
                "input": input_meta,
                "training_metrics": ckpt.meta.get("metrics", {}),
                "bn_statistics": ckpt.meta.get("bn_statistics", {}),
                "provenance": {
                    "checkpoint": str(ckpt.path),
                    "checkpoint_sha256": ckpt.meta["files"][MODEL_FILE],
                    "trained": ckpt.meta.get("created"),
                    "training_versions": ckpt.meta.get("versions"),
                    "export_versions": library_versions(),
                },
            },
        )
        config = render_config(
            name,
            [TensorSpec("input", "float32", shape)],
            [TensorSpec("logits", "float32", (len(labels),))],
            max_batch_size,
            max_queue_delay_us,
            layout=ckpt.meta["input"].get("layout", "NCHW"),
        )
    write_model_files(model_dir, config, labels)
    logger.info("wrote %s version %d", model_dir, version)
    return VersionWritten(model_dir, version, report)


def read_report(version_dir: Path) -> dict[str, Any]:
    """The export report of a written version."""
    report: dict[str, Any] = json.loads((version_dir / "export_report.json").read_text())
    return report


__all__ = ["VersionWritten", "default_name", "export_checkpoint", "read_report"]
