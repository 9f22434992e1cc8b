"""``ExportJob``: everything the export pipeline needs about one model, whatever it came from.

A source (a bnfold checkpoint, a PyTorch factory with weights, an ONNX file) produces a job; the pipeline
(``export.pipeline``) turns any job into a verified model version. A checkpoint or torch job has one float32
NCHW input, already normalised the way the model expects, and one (N, classes) output; an ONNX job lists
whatever signature its graph has in ``inputs`` and ``outputs`` (``export.verification.feeds`` says how
several inputs travel as one batch), and ``classes_output`` names the (N, classes) output its labels are for,
if any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from contracts.preprocessing import Preprocessing
from contracts.repository import TensorSpec
from export.errors import ExportError

if TYPE_CHECKING:
    from torch import nn


@dataclass
class ExportJob:
    """One model to fold, verify and write, with the data that proves it and the metadata that describes it."""

    name: str  # default model name in the repository
    model: nn.Module | onnx.ModelProto
    input_shape: tuple[int, ...]  # one sample, without the batch axis
    labels: list[str]
    normalization: dict[str, list[float]] | None = None  # {"mean": [...], "std": [...]}, or None
    samples: np.ndarray | None = None  # real inputs for the numerical checks
    validation_x: np.ndarray | None = None  # a whole validation split: top-1 agreement (and int8's gate)
    validation_y: np.ndarray | None = None
    calibration: np.ndarray | None = None  # real inputs for int8 calibration (a training split)
    input_name: str = "input"
    output_name: str = "logits"
    metadata: dict[str, Any] = field(default_factory=dict)  # bnfold.* ONNX metadata of the source
    report: dict[str, Any] = field(default_factory=dict)  # extra export_report.json sections
    onnx_checked: bool = False  # an ONNX ``model`` already passed check_onnx_input (job_from_onnx sets it)
    padded_bn: str = "add"  # a BN before a zero-padded conv: its shift as an "add" before it, or a "bias-map"
    preprocessing: Preprocessing | None = None  # the images' recipe (None: a bnfold checkpoint, today's squash)
    inputs: list[TensorSpec] = field(default_factory=list)  # every input (empty: one float32 ``input_name``)
    outputs: list[TensorSpec] = field(default_factory=list)  # every output (empty: ``output_name``'s logits)
    classes_output: str | None = None  # with ``outputs``: the (N, classes) output the labels name, or None

    @property
    def input_specs(self) -> list[TensorSpec]:
        return self.inputs or [TensorSpec(self.input_name, "float32", self.input_shape)]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return self.outputs or [TensorSpec(self.output_name, "float32", (len(self.labels),))]

    @property
    def labels_output(self) -> str | None:
        """The output the labels, top-1 agreement and classification apply to (None: no (N, classes) output)."""
        return self.classes_output if self.outputs else self.output_name

    def output_columns(self) -> tuple[tuple[str, slice], ...]:
        """Each output's columns when every output is joined per sample (``feeds.joined``); () for one output."""
        specs = self.output_specs
        if len(specs) == 1:
            return ()
        columns, start = [], 0
        for spec in specs:
            size = int(np.prod(spec.dims, dtype=np.int64))
            columns.append((spec.name, slice(start, start + size)))
            start += size
        return tuple(columns)

    def logits_columns(self) -> slice:
        """Where the labelled output's values lie when every output is joined per sample (``feeds.joined``)."""
        return dict(self.output_columns()).get(self.labels_output or "", slice(None))

    def signature(self) -> dict[str, Any]:
        """The inputs and outputs, and where labels and classification apply (export_report.json)."""
        out = self.labels_output
        note = (
            f"labels, top-1 agreement and classification apply to output {out!r}"
            if out is not None
            else "no output is (N, classes): labels, top-1 agreement and /v1/models/{m}/classify do not apply"
        )
        return {
            "inputs": [s.to_dict() for s in self.input_specs],
            "outputs": [s.to_dict() for s in self.output_specs],
            "labelled_output": out,
            "classification": note,
        }

    @property
    def input_meta(self) -> dict[str, Any]:
        layout = self.preprocessing.layout if self.preprocessing is not None else "NCHW"
        first = self.input_specs[0]
        meta: dict[str, Any] = {"name": first.name, "shape": list(first.dims), "layout": layout, "dtype": first.dtype}
        if self.normalization is not None:
            meta["normalization"] = self.normalization
        if self.preprocessing is not None:
            meta["preprocessing"] = self.preprocessing.to_dict()
        return meta

    def example(self) -> np.ndarray:
        """Two inputs to trace the model with: real ones when the job has them."""
        if self.samples is not None and len(self.samples) >= 2:
            return self.samples[:2]
        return np.random.default_rng(0).standard_normal((2, *self.input_shape)).astype(np.float32)


VARIANTS = ("float32", "float16", "int8")
VARIANT_SUFFIX = {"float32": "", "float16": "-fp16", "int8": "-int8"}


def variant_name(name: str, variant: str) -> str:
    """The repository name of a variant: ``X``, ``X-fp16``, ``X-int8``. A variant never replaces ``X``."""
    if variant not in VARIANT_SUFFIX:
        raise ExportError(f"unknown precision {variant!r}; expected one of {', '.join(VARIANTS)}")
    return name + VARIANT_SUFFIX[variant]
