"""What a fold did, layer by layer, and what an export verified: printable as a table and as JSON."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.errors import VerificationError

if TYPE_CHECKING:
    from export.verification.checks import Check, Tolerance


PADDED = "folded-into-following-padded"  # scale into the padded conv's weights, shift left as one Add before it
PADDED_NOTE = "scale folded into the padded conv, shift t/s left as one per-channel Add (1 op fewer than Mul+Add)"
PADDED_MAP = "folded-into-following-padded-bias-map"  # scale into the conv, shift as a constant map after it
PADDED_MAP_NOTE = (
    "scale folded into the padded conv, shift's effect a constant [C_out, H, W] map that replaces its bias (for "
    "this input size only): the conv's bias Add is the only one left (1 op fewer than Mul+Add)"
)
PADDED_MODES = ("add", "bias-map")


@dataclass
class FoldRow:
    """One BatchNorm layer: what it became, why, and the largest difference that introduced."""

    bn: str
    action: str  # "folded-into-preceding" | "folded-into-following" | PADDED | "lowered-to-scale-shift"
    target: str  # the layer it went into, or the new scale-shift module
    reason: str
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0


@dataclass
class FoldReport:
    """One row per BatchNorm layer, plus totals."""

    rows: list[FoldRow] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.action] = counts.get(row.action, 0) + 1
        return {
            "batchnorm_layers": len(self.rows),
            **counts,
            "max_abs_diff": max((r.max_abs_diff for r in self.rows), default=0.0),
            "max_rel_diff": max((r.max_rel_diff for r in self.rows), default=0.0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "totals": self.totals}

    def summary(self) -> str:
        """One line: how many BN layers were folded and lowered."""
        t = self.totals
        folded = t.get("folded-into-preceding", 0) + t.get("folded-into-following", 0)
        lowered, padded = t.get("lowered-to-scale-shift", 0), t.get(PADDED, 0) + t.get(PADDED_MAP, 0)
        shifts = f", {padded} folded into a padded conv (shift as an Add or a bias map)" if padded else ""
        return f"{t['batchnorm_layers']} BatchNorm layers: {folded} folded{shifts}, {lowered} lowered to scale-shift"

    def table(self) -> str:
        """A fixed-width text table, one row per BN layer."""
        head = ("BatchNorm", "action", "into", "max abs diff", "max rel diff", "reason")
        body = [
            (r.bn, r.action, r.target, f"{r.max_abs_diff:.2e}", f"{r.max_rel_diff:.2e}", r.reason) for r in self.rows
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
        widths[-1] = 0  # the reason column is not padded
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
        lines.insert(1, "-" * max(len(line) for line in lines))
        return "\n".join([*lines, self.summary()])


@dataclass
class ExportReport:
    """What an export wrote and every figure that proved it."""

    path: Path
    fold: FoldReport
    checks: list[Check]
    tolerance: Tolerance
    opset: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (fold, oracle, export, verify)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def precision(self) -> str:
        return self.tolerance.name

    def require_passed(self) -> None:
        """Raise VerificationError naming every failed check."""
        if not self.passed:
            failed = "; ".join(c.line() for c in self.checks if not c.passed)
            raise VerificationError(f"verification failed, nothing written: {failed}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "fold": self.fold.to_dict(),
            "verification": [c.to_dict() for c in self.checks],
            "precision": self.precision,
            "tolerance": self.tolerance.to_dict(),
            "warnings": self.warnings,
            "opset": self.opset,
            "onnx_ops": self.nodes,
            "timings_s": self.timings,
        }

    def verification_table(self) -> str:
        return "\n".join(c.line() for c in self.checks)


@contextlib.contextmanager
def stopwatch(timings: dict[str, float], step: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[step]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start


def library_versions() -> dict[str, str]:
    """Versions of what an export ran on, read from package metadata (torch is not imported for them)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(*names: str) -> str:
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                continue
        return "not installed"

    return {
        "bnfold": installed("bnfold"),
        "torch": installed("torch"),
        "numpy": installed("numpy"),
        "onnx": installed("onnx"),
        "onnxruntime": installed("onnxruntime", "onnxruntime-gpu"),
        "python": platform.python_version(),
    }
