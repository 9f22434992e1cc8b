"""What every experiment shares: settings, data, a seeded training run with a curve, and the run record."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.data import Dataset, load_dataset
from training.data.batches import batches_per_epoch, epoch_permutation, iterate_batches
from training.loop import evaluate, train_step
from training.models import build_model


@dataclass(frozen=True)
class Settings:
    """Where and how the experiments run."""

    out: Path
    quick: bool = False
    dataset: str = "digits"
    data_dir: Path | None = None
    seed: int = 0

    def load(self) -> Dataset:
        return load_dataset(self.dataset, data_dir=self.data_dir, seed=self.seed)


@dataclass
class Curve:
    """Validation accuracy (and anything else recorded) against training steps."""

    name: str
    config: dict[str, Any]
    steps: list[int] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)
    diverged_at: int | None = None
    seconds: float = 0.0

    @property
    def best(self) -> float:
        return max(self.val_acc, default=0.0)

    def steps_to(self, target: float) -> int | None:
        """First recorded step whose validation accuracy reaches ``target``."""
        return next((s for s, a in zip(self.steps, self.val_acc, strict=True) if a >= target), None)


def train_curve(
    name: str,
    data: Dataset,
    model: nn.Module,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    seed: int,
    momentum: float = 0.9,
    record: Callable[[nn.Module], dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
) -> Curve:
    """SGD with momentum at a constant ``lr`` for ``steps``, evaluating every ``eval_every`` steps.

    A loss that becomes non-finite ends the run (recorded as ``diverged_at``), as it would end a real one.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    curve = Curve(name, {"steps": steps, "batch_size": batch_size, "lr": lr, "momentum": momentum, **(config or {})})
    n = data.train_x.shape[0]
    per_epoch = batches_per_epoch(n, batch_size, drop_last=True)
    step = 0
    model.train()
    while step < steps:
        order = epoch_permutation(n, seed, step // per_epoch)
        for xb, yb in iterate_batches(data.train_x, data.train_y, batch_size, order, drop_last=True):
            loss, _ = train_step(model, optimizer, xb, yb, "none", None)
            step += 1
            if not torch.isfinite(torch.tensor(loss)):
                curve.diverged_at = step
                curve.steps.append(step)
                curve.val_acc.append(0.0)
                curve.seconds = time.perf_counter() - started
                return curve
            if step % eval_every == 0 or step == steps:
                curve.steps.append(step)
                curve.val_acc.append(evaluate(model, data.val_x, data.val_y)[1])
                if record is not None:
                    for key, value in record(model).items():
                        curve.extra.setdefault(key, []).append(value)
            if step >= steps:
                break
    curve.seconds = time.perf_counter() - started
    return curve


def make(name: str, data: Dataset, **options: Any) -> nn.Module:
    """A registry model sized for ``data``."""
    c, h, _ = data.input_shape
    return build_model(name, num_classes=data.num_classes, in_channels=c, image_size=h, **options)


def machine() -> dict[str, str]:
    """Where and when an experiment ran."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
