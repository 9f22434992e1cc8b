"""bnfold's export stage: fold BatchNorm into the weights, emit verified ONNX, write a model repository.

The public API:

- ``fold_batchnorm(module, example_inputs) -> (GraphModule, FoldReport)``: a torch module with no BatchNorm;
- ``fold_onnx(model_proto) -> (ModelProto, FoldReport)``: an ONNX graph with no BatchNormalization;
- ``export_onnx(module, example_inputs, path, ...) -> ExportReport``: fold, export, verify against float64;
- ``export_job(job, repository, name)``: any ``ExportJob`` (``job_from_checkpoint``, ``job_from_torch``,
  ``job_from_onnx``) -> the next verified version in a Triton-layout repository, as one transaction;
- ``export_checkpoint(checkpoint, repository, name)``: the same from a bnfold training checkpoint;
- ``write_model(repository, name, onnx_file, labels)``: add any ONNX classifier with its metadata as a version;
- ``quantize_int8(fp32_file, out_file, calibration, ...)``: the gated int8 variant of a verified float32 file.

Names are imported on first use, so ``import export`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from export.errors import ExportError, VerificationError

_PUBLIC = {
    "fold_batchnorm": "export.folding.torch_fold",
    "fold_onnx": "export.folding.onnx_fold",
    "export_onnx": "export.emit.from_torch",
    "export_onnx_graph": "export.emit.from_onnx",
    "export_job": "export.pipeline",
    "export_checkpoint": "export.pipeline",
    "VersionWritten": "export.pipeline",
    "ExportJob": "export.job",
    "job_from_checkpoint": "export.sources.checkpoint",
    "job_from_torch": "export.sources.torch_factory",
    "TorchSource": "export.sources.torch_factory",
    "job_from_onnx": "export.sources.onnx_file",
    "OnnxSource": "export.sources.onnx_file",
    "write_model": "export.repository.writer",
    "quantize_int8": "export.variants.int8",
    "FoldReport": "export.report",
    "FoldRow": "export.report",
    "ExportReport": "export.report",
}

__all__ = ["ExportError", "VerificationError", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
