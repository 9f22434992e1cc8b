"""Numerical verification of an export: every check is part of every export, and a breach fails it.

1. folded torch module vs the original eval model (real and random inputs), allclose(rtol, atol);
2. ONNX Runtime (CPU provider, graph optimisations off, so its own fusions cannot hide a bad fold) vs the
   original eval model, same tolerance;
3. batch invariance: each sample alone and inside a batch of 8 give the same output (atol 1e-5);
4. with a validation split: top-1 agreement between ONNX Runtime and the original model is 100%.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BATCH_INVARIANCE_ATOL = 1e-5


@dataclass
class Check:
    """The outcome of one verification check, with the figures that decided it."""

    name: str
    passed: bool
    samples: int
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    detail: str = ""

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        return (
            f"{verdict} {self.name:<22} samples {self.samples:>5}  max abs {self.max_abs_diff:.2e}  "
            f"max rel {self.max_rel_diff:.2e}  {self.detail}"
        ).rstrip()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(name: str, new: np.ndarray, ref: np.ndarray, rtol: float, atol: float, detail: str = "") -> Check:
    """allclose(new, ref, rtol, atol) with its largest absolute and relative differences."""
    new64, ref64 = new.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(new64 - ref64)
    ok = bool(np.all(np.isfinite(new64))) and bool(np.all(diff <= atol + rtol * np.abs(ref64)))
    rel = diff / np.maximum(np.abs(ref64), 1e-12)
    return Check(name, ok, int(ref.shape[0]), float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), detail)


def ort_session(path: Path, disable_optimizations: bool = True) -> Any:
    """An ONNX Runtime session on the CPU provider, with graph optimisations off by default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if disable_optimizations:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Apply ``fn`` to ``x`` in chunks of ``batch`` and concatenate."""
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def batch_invariance(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, samples: int = 4, atol: float | None = None
) -> Check:
    """Each of the first ``samples`` inputs run alone vs inside a batch of 8, within ``atol`` (1e-5)."""
    atol = BATCH_INVARIANCE_ATOL if atol is None else atol
    worst = 0.0
    ok = True
    batch = np.concatenate([x] * (8 // len(x) + 1))[:8] if len(x) < 8 else x[:8]
    together = run(batch)
    for i in range(min(samples, len(batch))):
        alone = run(batch[i : i + 1])[0]
        d = float(np.abs(alone.astype(np.float64) - together[i].astype(np.float64)).max())
        worst = max(worst, d)
        ok = ok and d <= atol
    return Check(
        "batch invariance", ok, min(samples, len(batch)), worst, 0.0, f"alone vs in a batch of 8, atol {atol:g}"
    )


def top1_agreement(new: np.ndarray, ref: np.ndarray, required: float = 1.0) -> Check:
    """Share of samples whose arg-max class agrees; passes at ``required`` (100% by default) or above."""
    agree = new.argmax(axis=1) == ref.argmax(axis=1)
    share = float(agree.mean()) if len(agree) else 1.0
    return Check(
        "top-1 agreement",
        share >= required,
        len(agree),
        detail=f"{share:.2%} of the validation split agree (required {required:.1%})",
    )
