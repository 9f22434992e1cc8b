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
from contracts.repository import TRITON_TYPES, TensorSpec
from export.errors import ExportError
from export.graph.files import check_onnx_input, load_onnx
from export.graph.inspect import graph_inputs
from export.job import ExportJob
from export.recalibration.algorithm2 import recalibrate_onnx
from export.sources.images import ImageSet, load_images, recipe_for
from export.sources.labels import resolve_labels
from export.verification.checks import ort_session
from export.verification.feeds import feed, random_batch


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


def probe_outputs(model: onnx.ModelProto, path: Path, inputs: list[TensorSpec]) -> list[TensorSpec]:
    """Every output's dtype and per-sample shape, from one run of the original graph on a batch of 2 inputs
    generated per datatype (symbolic output shapes are common). Each output must keep the batch axis first."""
    names = [o.name for o in model.graph.output]
    try:
        session = ort_session(model.SerializeToString(), "disable_all")
        outs = session.run(names, feed(random_batch(inputs, 2), [s.name for s in inputs]))
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...): all mean "cannot run"
        given = "; ".join(f"{s.name}: {s.dtype} of shape {','.join(map(str, s.dims))}" for s in inputs)
        raise ExportError(
            f"{path}: passes onnx.checker but ONNX Runtime cannot run it on a batch of 2 inputs ({given}) "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    specs = []
    for name, out in zip(names, outs, strict=True):
        array = np.asarray(out)
        if array.ndim < 1 or array.shape[0] != 2:
            raise ExportError(
                f"ONNX output {name!r} has shape {array.shape} for a batch of 2 inputs; bnfold serves outputs "
                "whose first axis is the batch axis"
            )
        if array.dtype.name not in TRITON_TYPES:
            raise ExportError(f"ONNX output {name!r} is {array.dtype}; bnfold serves {', '.join(TRITON_TYPES)}")
        specs.append(TensorSpec(name, array.dtype.name, tuple(int(d) for d in array.shape[1:])))
    return specs


def classes_output(outputs: list[TensorSpec]) -> TensorSpec | None:
    """The output labels apply to: the first floating-point one shaped (N, classes); None when there is none."""
    return next((o for o in outputs if np.dtype(o.dtype).kind == "f" and len(o.dims) == 1), None)


def _image_input(source: OnnxSource, inputs: list[TensorSpec]) -> TensorSpec:
    """The one input ``--images`` and ``--recalibrate`` images go to: float (normalised) or uint8 (raw pixels)."""
    if len(inputs) != 1:
        names = ", ".join(s.name for s in inputs)
        raise ExportError(f"--images and --recalibrate need a model with one image input; it has inputs {names}")
    spec = inputs[0]
    if spec.dtype == "uint8" and (source.mean or source.std):
        raise ExportError(f"input {spec.name!r} is uint8: it takes raw pixels, so --mean and --std do not apply")
    if spec.dtype not in ("uint8", "float16", "float32", "float64"):
        raise ExportError(f"--images: input {spec.name!r} is {spec.dtype}; images go to a float or uint8 input")
    return spec


def _images(root: Path, spec: TensorSpec, source: OnnxSource, prep: Preprocessing | None) -> ImageSet:
    """The images of ``root`` as ``spec`` takes them: uint8 pixels 0-255, or floats in [0, 1] normalised."""
    images = load_images(root, spec.dims, source.mean, source.std, prep)
    if spec.dtype == "uint8":
        images.x = np.rint(images.x * 255.0).astype(np.uint8)
    return images


def _labels(source: OnnxSource, outputs: list[TensorSpec], images: ImageSet | None) -> list[str]:
    labelled = classes_output(outputs)
    if labelled is None:
        if source.labels_file is not None:
            shapes = ", ".join(f"{o.name} {[-1, *o.dims]}" for o in outputs)
            raise ExportError(f"--labels {source.labels_file}: no output is (N, classes) (outputs: {shapes})")
        return []
    return resolve_labels(source.labels_file, labelled.dims[0], images)


def job_from_onnx(source: OnnxSource) -> ExportJob:
    """The file's graph, its inputs and outputs, and the user's labels and images, as an export job."""
    model = load_onnx(source.path)
    check_onnx_input(model, source.path, training_ok=source.recalibrate is not None)
    inputs = graph_inputs(model)
    uses_images = source.images is not None or source.recalibrate is not None
    image = _image_input(source, inputs) if uses_images else inputs[0]
    prep = recipe_for(image.dims, source.mean, source.std, source.preprocessing)
    images = _images(source.images, image, source, prep) if source.images else None
    report: dict[str, Any] = {
        "provenance": {"onnx": str(source.path), "producer": f"{model.producer_name} {model.producer_version}"}
    }
    if source.recalibrate is not None:
        batches = _images(source.recalibrate, image, source, prep)
        names = (image.name, model.graph.output[0].name)
        model, report["recalibration"] = recalibrate_onnx(model, names, batches, source.recalibrate_batch_size, images)
    outputs = probe_outputs(model, source.path, inputs)
    labelled = classes_output(outputs)
    labels = _labels(source, outputs, images)
    validation = images is not None and images.y is not None and labelled is not None
    return ExportJob(
        name=source.path.stem,
        model=model,
        input_shape=image.dims,
        preprocessing=prep,
        labels=labels,
        normalization={"mean": source.mean, "std": source.std} if source.mean and source.std else None,
        samples=images.x if images is not None else None,
        validation_x=images.x if validation and images is not None else None,
        validation_y=images.y if images is not None else None,
        calibration=images.x if images is not None else None,
        input_name=image.name,
        output_name=(labelled or outputs[0]).name,
        metadata={"bnfold.model": {"name": source.path.stem, "source_onnx": str(source.path)}},
        onnx_checked=True,  # checked above, from the file (onnx.checker cannot hold a model of 2 GB or more)
        report=report,
        inputs=inputs,
        outputs=outputs,
        classes_output=labelled.name if labelled is not None else None,
    )
