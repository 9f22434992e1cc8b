"""``export_onnx``: a torch module in, a folded, checked and verified ONNX file out.

The steps, each one function: fold (``export.folding.torch_fold``) -> reference outputs from the float64 oracle ->
emit ONNX with a dynamic batch axis -> verify (``export.verification.checks``) -> commit. Nothing is written at ``path``
unless every check passes: the file is emitted to a temporary sibling and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.errors import ExportError
from export.folding.torch_fold import fold_batchnorm
from export.graph.inspect import add_metadata, require_no_batchnorm
from export.report import ExportReport, FoldReport, stopwatch
from export.variants.fp16 import check_fp16, to_fp16
from export.verification.checks import (
    FLOAT16,
    FLOAT32,
    Check,
    Reference,
    Runner,
    Tolerance,
    check_runner,
    onnx_checks,
    run_batched,
    timed,
    validation_agreement,
)
from training.atomic import staged_file

logger = logging.getLogger(__name__)


@dataclass
class CheckInputs:
    """What verification runs on: groups of inputs (real, random) and an optional validation split."""

    groups: dict[str, np.ndarray]
    validation: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        shape: tuple[int, ...],
        samples: np.ndarray | None,
        validation: np.ndarray | None,
        random: int = 32,
        seed: int = 0,
    ) -> CheckInputs:
        """Up to 256 real samples and ``random`` standard-normal inputs of ``shape``, seeded."""
        groups = {"random": np.random.default_rng(seed).standard_normal((random, *shape)).astype(np.float32)}
        if samples is not None and len(samples):
            groups = {"real": np.ascontiguousarray(samples[:256], dtype=np.float32), **groups}
        return cls(groups, validation)


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


def references(inputs: CheckInputs, original: Runner, oracle: Runner) -> list[Reference]:
    """Oracle and float32-original outputs on every input group."""
    return [
        Reference(group, x, run_batched(oracle, x).astype(np.float64), run_batched(original, x))
        for group, x in inputs.groups.items()
    ]


def emit_onnx(
    module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, names: tuple[str, str], opset: int | None
) -> onnx.ModelProto:
    """The dynamo exporter, batch axis dynamic; its console chatter goes to the debug log."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
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
    except Exception as exc:  # the exporter raises many types; all mean "this module does not export"
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {type(exc).__name__}: {exc}") from exc
    finally:
        logger.debug("torch.onnx.export: %s", chatter.getvalue())
    return onnx.load(str(path))


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
    path, names, tol = Path(path), (input_name, output_name), FLOAT16 if fp16 else FLOAT32
    timings: dict[str, float] = {}
    original = copy.deepcopy(model).eval()
    with stopwatch(timings, "fold"):
        folded, fold_report = fold_batchnorm(model, example_inputs, padded)
    warnings = check_fp16(original, folded) if fp16 else []
    candidate = to_fp16(folded) if fp16 else folded
    shape = tuple(example_inputs[0].shape[1:])
    inputs = CheckInputs.build(shape, _numpy(samples), _numpy(validation), random_samples, seed)
    oracle, original_run = float64_oracle(original), torch_runner(original)
    with stopwatch(timings, "references (float64 oracle, float32 original)"):
        refs = references(inputs, original_run, oracle)
    checks = [check_runner("torch folded", torch_runner(candidate), r, tol) for r in refs]
    with staged_file(path) as tmp:
        with stopwatch(timings, "onnx export"):
            proto = emit_onnx(candidate, example_inputs, tmp, names, opset)
            add_metadata(proto, {**(metadata or {}), "bnfold.fold_summary": fold_report.totals})
            onnx.save(proto, str(tmp))
        with stopwatch(timings, "onnx checks"):
            report = verify_file(tmp, fold_report, refs, inputs, (original_run, oracle), names, tol)
        report.path, report.warnings, report.timings = path, warnings, timings
        report.checks[:0] = checks
        report.require_passed()
    logger.debug("exported %s (%d ONNX nodes, no BatchNormalization)", path, sum(report.nodes.values()))
    return report


def verify_file(
    path: Path,
    fold_report: FoldReport,
    refs: list[Reference],
    inputs: CheckInputs,
    runners: tuple[Runner, Runner],
    names: tuple[str, str],
    tol: Tolerance,
) -> ExportReport:
    """onnx.checker, no BatchNormalization left, the ONNX Runtime checks and top-1 agreement on ``path``.

    ``runners`` are the float32 original and the float64 oracle. Shared by every export path (torch, ONNX).
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"bnfold bug: the folded graph fails onnx.checker: {exc}") from exc
    proto = onnx.load(str(path), load_external_data=False)
    ops = require_no_batchnorm(proto)
    checks: list[Check]
    checks, plain = onnx_checks(path, refs, names, tol)
    val = inputs.validation
    if val is not None:
        checks.append(timed(lambda: validation_agreement(plain, val, *runners, tol)))
    return ExportReport(path, fold_report, checks, tol, proto.opset_import[0].version, ops)
