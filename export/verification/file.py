"""Verification of one written ONNX file: the inputs it runs on, the references, and every check on the file.

``CheckInputs`` holds real and random input groups (and an optional validation split); ``references`` runs the
float64 oracle and the float32 original on them; ``verify_file`` holds the file to onnx.checker, "no
BatchNormalization left", the ONNX Runtime checks of ``export.verification.checks`` and top-1 agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.errors import ExportError
from export.graph.inspect import require_no_batchnorm
from export.report import ExportReport, FoldReport
from export.verification.checks import (
    Check,
    Reference,
    Runner,
    Tolerance,
    onnx_checks,
    run_batched,
    timed,
    validation_agreement,
)


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

    def first(self, n: int = 8) -> np.ndarray:
        """The first ``n`` inputs of the first group (real ones when there are any)."""
        return next(iter(self.groups.values()))[:n]


def references(inputs: CheckInputs, original: Runner, oracle: Runner) -> list[Reference]:
    """Oracle and float32-original outputs on every input group."""
    return [
        Reference(group, x, run_batched(oracle, x).astype(np.float64), run_batched(original, x))
        for group, x in inputs.groups.items()
    ]


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
