"""Figures across seeds: the mean as a line, the spread (min to max over seeds) as a shaded band."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

BAND = "line: mean over seeds; band: min to max over seeds"


def band(ax: Any, x: Sequence[float], rows: Sequence[Any], label: str, **style: Any) -> None:
    """Plot the mean of ``rows`` (one row per seed, all as long as ``x``) with a min-max band."""
    v = np.asarray(rows, dtype=np.float64)  # (seeds, len(x))
    (line,) = ax.plot(x, v.mean(axis=0), label=label, **style)
    ax.fill_between(x, v.min(axis=0), v.max(axis=0), color=line.get_color(), alpha=0.2, linewidth=0)


def figure(columns: int, width: float = 5.0, height: float = 4.0) -> tuple[Any, Any]:
    """A row of ``columns`` axes (one axes when ``columns`` is 1)."""
    return plt.subplots(1, columns, figsize=(width * columns, height))


def save(fig: Any, path: Path, seeds: int) -> None:
    """Write ``fig`` as a PNG with a caption naming what the line and band are."""
    fig.suptitle(f"{BAND} ({seeds} seeds)", fontsize=9, y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
