"""Verification of one written ONNX file: the inputs it runs on, the references, and every check on the file.

``CheckInputs`` holds real and random input groups (and an optional validation split); ``references`` runs the
float64 oracle and the float32 original on them; ``verify_file`` holds the file to onnx.checker, "no
BatchNormalization left", the ONNX Runtime checks of ``export.verification.checks`` and top-1 agreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from contracts.repository import TensorSpec
from export.errors import ExportError
from export.graph.inspect import require_no_batchnorm
from export.report import ExportReport, FoldReport
from export.verification.checks import (
    Check,
    IONames,
    Reference,
    Runner,
    Tolerance,
    onnx_checks,
    run_batched,
    timed,
    validation_agreement,
)
from export.verification.feeds import random_batch


@dataclass
class CheckInputs:
    """What verification runs on: groups of inputs (real, random) and an optional validation split.

    Batches are in :mod:`export.verification.feeds`'s form (one array, or a structured one for several
    inputs); ``logits``: the output columns top-1 agreement reads (several outputs joined per sample).
    """

    groups: dict[str, np.ndarray]
    validation: np.ndarray | None = None
    logits: slice = field(default_factory=lambda: slice(None))
    outputs: tuple[tuple[str, slice], ...] = ()  # several outputs: each one's name and joined columns

    @classmethod
    def build(
        cls,
        signature: tuple[int, ...] | Sequence[TensorSpec],
        samples: np.ndarray | None,
        validation: np.ndarray | None,
        random: int = 32,
        seed: int = 0,
    ) -> CheckInputs:
        """Up to 256 real samples and ``random`` random inputs, seeded: for a float32 input of one sample's
        shape (a tuple of ints), or for the inputs ``signature`` lists, generated per datatype."""
        specs = _specs(signature)
        groups = {"random": random_batch(specs, random, seed)}
        if samples is not None and len(samples):
            real = samples[:256]
            if len(specs) == 1:
                real = np.asarray(real, dtype=np.dtype(specs[0].dtype))
            groups = {"real": np.ascontiguousarray(real), **groups}
        return cls(groups, validation)

    def first(self, n: int = 8) -> np.ndarray:
        """The first ``n`` inputs of the first group (real ones when there are any)."""
        return next(iter(self.groups.values()))[:n]


def _specs(signature: tuple[int, ...] | Sequence[TensorSpec]) -> list[TensorSpec]:
    if all(isinstance(d, int) for d in signature):
        return [TensorSpec("input", "float32", tuple(int(d) for d in signature))]  # type: ignore[arg-type]
    return [s for s in signature if isinstance(s, TensorSpec)]


def references(inputs: CheckInputs, original: Runner, oracle: Runner) -> list[Reference]:
    """Oracle and float32-original outputs on every input group."""
    return [
        Reference(group, x, run_batched(oracle, x).astype(np.float64), run_batched(original, x), inputs.outputs)
        for group, x in inputs.groups.items()
    ]


def verify_file(
    path: Path,
    fold_report: FoldReport,
    refs: list[Reference],
    inputs: CheckInputs,
    runners: tuple[Runner, Runner],
    names: IONames,
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
        checks.append(timed(lambda: validation_agreement(plain, val, *runners, tol, inputs.logits)))
    return ExportReport(path, fold_report, checks, tol, proto.opset_import[0].version, ops)
