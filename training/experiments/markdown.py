"""Markdown pieces for the report: tables and "mean ± sd" cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pm(values: Sequence[float], fmt: str = ".4f") -> str:
    """``mean ± sd`` over seeds (sample standard deviation; no ± for a single seed)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return format(float(v.mean()), fmt)
    return f"{format(float(v.mean()), fmt)} ± {format(float(v.std(ddof=1)), fmt)}"
