"""An ONNX file from any exporter as an export job: read (with external data), checked, with the user's data.

With ``--recalibrate DIR`` every BatchNormalization gets population statistics recomputed by the paper's
Algorithm 2 inside the graph (``export.recalibration.algorithm2``), and BN in training mode becomes inference BN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from contracts.preprocessing import Preprocessing
from export.errors import ExportError
from export.graph.files import check_onnx_input, load_onnx
from export.graph.inspect import graph_io
from export.job import ExportJob
from export.recalibration.algorithm2 import recalibrate_onnx
from export.sources.images import load_images, recipe_for
from export.sources.labels import resolve_labels
from export.verification.checks import ort_session, session_runner


@dataclass
class OnnxSource:
    """What the user named for ``bnfold-export --onnx``."""

    path: Path
    labels_file: Path | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    images: Path | None = None
    recalibrate: Path | None = None
    recalibrate_batch_size: int = 32
    preprocessing: Preprocessing | None = None


def _classes(model: onnx.ModelProto, path: Path, names: tuple[str, str], shape: tuple[int, ...]) -> int:
    """The number of logits, from one run of the original graph (symbolic output shapes are common)."""
    try:
        run = session_runner(ort_session(model.SerializeToString(), "disable_all"), *names)
        out = run(np.zeros((2, *shape), dtype=np.float32))
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...): all mean "cannot run"
        raise ExportError(
            f"{path}: passes onnx.checker but ONNX Runtime cannot run it on a batch of 2 inputs of shape "
            f"{','.join(map(str, shape))} ({type(exc).__name__}: {exc})"
        ) from exc
    if out.ndim != 2:
        raise ExportError(f"ONNX output {names[1]!r} has shape {out.shape}; a classifier returns (N, classes)")
    return int(out.shape[1])


def job_from_onnx(source: OnnxSource) -> ExportJob:
    """The file's graph, its I/O names and shape, and the user's labels and images, as an export job."""
    model = load_onnx(source.path)
    check_onnx_input(model, source.path, training_ok=source.recalibrate is not None)
    input_name, output_name, shape = graph_io(model)
    prep = recipe_for(shape, source.mean, source.std, source.preprocessing)
    images = load_images(source.images, shape, source.mean, source.std, prep) if source.images else None
    report: dict[str, Any] = {
        "provenance": {"onnx": str(source.path), "producer": f"{model.producer_name} {model.producer_version}"}
    }
    if source.recalibrate is not None:
        batches = load_images(source.recalibrate, shape, source.mean, source.std, prep)
        names = (input_name, output_name)
        model, report["recalibration"] = recalibrate_onnx(model, names, batches, source.recalibrate_batch_size, images)
    classes = _classes(model, source.path, (input_name, output_name), shape)
    labels = resolve_labels(source.labels_file, classes, images)
    labelled = images is not None and images.y is not None
    return ExportJob(
        name=source.path.stem,
        model=model,
        input_shape=shape,
        preprocessing=prep,
        labels=labels,
        normalization={"mean": source.mean, "std": source.std} if source.mean and source.std else None,
        samples=images.x if images is not None else None,
        validation_x=images.x if labelled and images is not None else None,
        validation_y=images.y if images is not None else None,
        calibration=images.x if images is not None else None,
        input_name=input_name,
        output_name=output_name,
        metadata={"bnfold.model": {"name": source.path.stem, "source_onnx": str(source.path)}},
        onnx_checked=True,  # checked above, from the file (onnx.checker cannot hold a model of 2 GB or more)
        report=report,
    )
