"""A torch module -> a folded ONNX ``Candidate``; and ``export_onnx``, the same as one verified file.

Fold (``export.folding.torch_fold``), optionally convert to fp16 (``export.variants.fp16``), emit ONNX with a
dynamic batch axis through torch's dynamo exporter. The candidate carries the float32 original and its float64
run (the oracle) and a pre-check of the folded module itself; ``export.emit.candidate.write_verified`` does the
rest. This module imports torch: only torch sources come here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.emit.candidate import Candidate, write_verified
from export.errors import ExportError
from export.folding.torch_fold import fold_batchnorm
from export.report import ExportReport, stopwatch
from export.variants.fp16 import check_fp16, to_fp16
from export.verification.checks import FLOAT16, FLOAT32, Check, Reference, Runner, check_runner
from export.verification.file import CheckInputs
from training.atomic import staged_file

logger = logging.getLogger(__name__)


def _numpy(x: torch.Tensor | None) -> np.ndarray | None:
    return x.detach().numpy() if x is not None else None


def torch_runner(module: nn.Module, dtype: torch.dtype = torch.float32) -> Runner:
    """``x -> module(x)`` in ``dtype``, on numpy arrays, without autograd."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(x)).to(dtype))
        return out.detach().numpy()

    return run


def float64_oracle(model: nn.Module) -> Runner:
    """The original model run in float64: the truth that every float32 candidate is measured against."""
    oracle = copy.deepcopy(model).eval().double()
    run = torch_runner(oracle, torch.float64)

    def guarded(x: np.ndarray) -> np.ndarray:
        try:
            return run(x)
        except RuntimeError as exc:
            raise ExportError(
                f"{type(model).__name__} does not run in float64 ({exc}); verification needs a float64 run of the "
                "original model as its reference: avoid hard-coded float32 tensors in forward()"
            ) from exc

    return guarded


def emit_onnx(
    module: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[str, str], opset: int | None
) -> onnx.ModelProto:
    """The dynamo exporter, batch axis dynamic; its console chatter goes to the debug log."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    chatter = io.StringIO()
    try:
        with tempfile.TemporaryDirectory(prefix="bnfold-emit-") as tmp, contextlib.redirect_stdout(chatter):
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=[names[0]],
                output_names=[names[1]],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                opset_version=opset,
            )
            return onnx.load(str(path))
    except Exception as exc:  # the exporter raises many types; all mean "this module does not export"
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {type(exc).__name__}: {exc}") from exc
    finally:
        logger.debug("torch.onnx.export: %s", chatter.getvalue())


def torch_candidate(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    names: tuple[str, str] = ("input", "logits"),
    *,
    fp16: bool = False,
    opset: int | None = None,
    padded: str = "add",
) -> Candidate:
    """``model`` folded (fp16 with ``fp16``: float32 at its edges) and emitted as ONNX, with its judges.

    ``padded``: how a BN before a zero-padded conv is folded (``fold_batchnorm``'s).
    """
    timings: dict[str, float] = {}
    original = copy.deepcopy(model).eval()
    with stopwatch(timings, "fold"):
        folded, fold_report = fold_batchnorm(model, example_inputs, padded)
    warnings = check_fp16(original, folded) if fp16 else []
    module = to_fp16(folded) if fp16 else folded
    tol = FLOAT16 if fp16 else FLOAT32

    def folded_module(refs: list[Reference]) -> list[Check]:
        return [check_runner("torch folded", torch_runner(module), r, tol) for r in refs]

    with stopwatch(timings, "onnx export"):
        proto = emit_onnx(module, example_inputs, names, opset)
    return Candidate(
        proto,
        fold_report,
        torch_runner(original),
        float64_oracle(original),
        names,
        tol,
        folded_module,
        warnings,
        timings,
    )


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    metadata: dict[str, Any] | None = None,
    samples: torch.Tensor | None = None,
    validation: torch.Tensor | None = None,
    random_samples: int = 32,
    opset: int | None = None,
    seed: int = 0,
    fp16: bool = False,
    padded: str = "add",
) -> ExportReport:
    """Fold ``model``'s BatchNorms, export ONNX to ``path``, check it and verify it against float64.

    ``samples`` are real inputs for the checks (random inputs are always added); ``validation`` (all inputs of
    a validation split) enables the top-1 agreement check. ``fp16`` exports the half-precision variant
    (float32 input and output), held to fp16's own precision. ``metadata`` is embedded as ONNX metadata_props
    (every value JSON-encoded). ``padded`` is ``fold_batchnorm``'s. Raises :class:`VerificationError` and writes
    nothing on any breach.
    """
    shape = tuple(example_inputs[0].shape[1:])
    inputs = CheckInputs.build(shape, _numpy(samples), _numpy(validation), random_samples, seed)
    candidate = torch_candidate(model, example_inputs, (input_name, output_name), fp16=fp16, opset=opset, padded=padded)
    with staged_file(Path(path)) as tmp:
        report = write_verified(candidate, tmp, inputs, metadata)
        report.path = Path(path)
    return report
