"""Run metrics: append-only JSONL records and PNG plots of the training curves (matplotlib, Agg)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per line to ``path``; each record has a ``kind`` (step, epoch, final)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, **fields}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss and accuracy against steps: training (per logged step) and validation (per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train (batch)", alpha=0.6)
    ax_loss.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="validation")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_acc.plot([r["step"] for r in steps], [r["acc"] for r in steps], label="train (batch)", alpha=0.6)
    ax_acc.plot([r["step"] for r in epochs], [r["val_acc"] for r in epochs], "o-", label="validation")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1.01)
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    logger.info("plots written: %s", path)
