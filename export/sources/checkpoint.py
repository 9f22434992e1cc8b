"""A bnfold training checkpoint as an export job.

Reads only what training wrote (``checkpoint.json`` + ``model.safetensors``); rebuilds the checkpoint's
dataset for real verification samples, the top-1 agreement check on the whole validation split, and int8
calibration on the training split.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from export.errors import ExportError
from export.job import ExportJob
from training.checkpoint import MODEL_FILE, Checkpoint, load_checkpoint
from training.data import Dataset, load_dataset
from training.errors import BnfoldError

logger = logging.getLogger(__name__)


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


def job_from_checkpoint(checkpoint: Path, data_dir: Path | None = None) -> ExportJob:
    """Load ``checkpoint`` and its dataset into an export job."""
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model()
    data = _dataset(ckpt, data_dir)
    shape = tuple(ckpt.meta["input"]["shape"])
    if data.input_shape != shape:
        raise ExportError(f"the dataset yields inputs of shape {data.input_shape}, the checkpoint expects {shape}")
    sha = ckpt.meta["files"][MODEL_FILE]
    return ExportJob(
        name=default_name(ckpt),
        model=model,
        input_shape=shape,
        labels=list(ckpt.meta["labels"]),
        normalization=ckpt.meta["input"].get("normalization"),
        samples=data.val_x.numpy(),
        validation_x=data.val_x.numpy(),
        validation_y=data.val_y.numpy(),
        calibration=data.train_x.numpy(),
        metadata={
            "bnfold.model": {"name": ckpt.meta["model"]["name"], "options": ckpt.meta["model"]["options"]},
            "bnfold.source_checkpoint": {"path": str(ckpt.path), "sha256": sha},
        },
        report={
            "training_metrics": ckpt.meta.get("metrics", {}),
            "bn_statistics": ckpt.meta.get("bn_statistics", {}),
            "provenance": {
                "checkpoint": str(ckpt.path),
                "checkpoint_sha256": sha,
                "trained": ckpt.meta.get("created"),
                "training_versions": ckpt.meta.get("versions"),
            },
        },
    )
