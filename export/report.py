"""What a fold did, layer by layer, and what an export verified: printable as a table and as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FoldRow:
    """One BatchNorm layer: what it became, why, and the largest difference that introduced."""

    bn: str
    action: str  # "folded-into-preceding" | "folded-into-following" | "lowered-to-scale-shift"
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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """One line: how many BN layers were folded and lowered."""
        t = self.totals
        folded = t.get("folded-into-preceding", 0) + t.get("folded-into-following", 0)
        lowered = t.get("lowered-to-scale-shift", 0)
        return f"{t['batchnorm_layers']} BatchNorm layers: {folded} folded, {lowered} lowered to scale-shift"

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
