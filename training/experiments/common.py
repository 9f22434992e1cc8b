"""What every experiment shares: settings, data, a seeded training run with a curve, and the experiment record.

Every training run here uses one intra-op thread (:func:`one_thread`), so its numbers do not depend on how
many runs share the machine or on whether they run in this process or in a worker: a seed gives the same
result bit for bit wherever it runs on the same machine.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.data import Dataset, load_dataset
from training.data.batches import batches_per_epoch, epoch_permutation, iterate_batches
from training.loop import evaluate, train_step
from training.models import build_model

Tick = Callable[[int], None]
Timing = dict[str, float]  # "wall" and "cpu" seconds
DEFAULT_SEEDS = 5


@dataclass(frozen=True)
class Settings:
    """Where and how the experiments run. ``seed`` fixes the data split; the runs use seeds seed..seed+seeds-1."""

    out: Path
    quick: bool = False
    dataset: str = "digits"
    data_dir: Path | None = None
    seed: int = 0
    seeds: int = DEFAULT_SEEDS
    jobs: int = 1

    @property
    def run_seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    def load(self) -> Dataset:
        return _load(self.dataset, self.data_dir, self.seed)


@dataclass(frozen=True)
class CurvePlan:
    """Train for ``steps``, evaluating every ``every`` steps."""

    steps: int
    every: int

    @property
    def never(self) -> int:
        """The step count recorded for a target never reached: one evaluation past the end."""
        return self.steps + self.every


@functools.lru_cache(maxsize=2)
def _load(dataset: str, data_dir: Path | None, seed: int) -> Dataset:
    return load_dataset(dataset, data_dir=data_dir, seed=seed)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread (deterministic and, for these small models, fastest)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Curve:
    """Validation accuracy (and anything else recorded) against training steps."""

    name: str
    config: dict[str, Any]
    steps: list[int] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)  # continuous: any change to the numbers shows here
    extra: dict[str, list[Any]] = field(default_factory=dict)
    diverged_at: int | None = None

    def record(self) -> dict[str, Any]:
        record = {"steps": self.steps, "val_acc": self.val_acc, "val_loss": self.val_loss}
        return {**record, "diverged_at": self.diverged_at, **self.extra}


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
    tick: Tick | None = None,
) -> Curve:
    """SGD with momentum at a constant ``lr`` for ``steps``, evaluating every ``eval_every`` steps.

    A loss that becomes non-finite ends the run (recorded as ``diverged_at``, accuracy 0 from there on), as it
    would end a real one. ``tick(k)`` is told of every ``k`` steps done (for a progress bar).
    """
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
            if tick is not None:
                tick(1)
            if not math.isfinite(loss):
                curve.diverged_at = step
                if tick is not None:
                    tick(steps - step)
                return curve
            if step % eval_every == 0 or step == steps:
                curve.steps.append(step)
                loss_value, acc = evaluate(model, data.val_x, data.val_y)
                curve.val_acc.append(acc)
                curve.val_loss.append(loss_value)
                for key, value in (record(model) if record is not None else {}).items():
                    curve.extra.setdefault(key, []).append(value)
            if step >= steps:
                break
    return curve


def best(curve: dict[str, Any]) -> float:
    """The best validation accuracy of a recorded curve."""
    return max(curve["val_acc"], default=0.0)


def steps_to(curve: dict[str, Any], target: float, never: int) -> int:
    """First recorded step of ``curve`` whose validation accuracy reaches ``target``; ``never`` when none does."""
    return next((s for s, a in zip(curve["steps"], curve["val_acc"], strict=True) if a >= target), never)


def eval_steps(steps: int, every: int) -> list[int]:
    """The steps at which :func:`train_curve` evaluates."""
    return sorted({*range(every, steps + 1, every), steps})


def padded(values: Sequence[float], length: int) -> list[float]:
    """A diverged run's curve, padded with accuracy 0 to the planned number of evaluations."""
    return [*values, *([0.0] * (length - len(values)))]


def make(name: str, data: Dataset, seed: int, **options: Any) -> nn.Module:
    """A registry model sized for ``data``, initialised from ``seed``."""
    c, h, _ = data.input_shape
    torch.manual_seed(seed)
    return build_model(name, num_classes=data.num_classes, in_channels=c, image_size=h, **options)


def timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    """``fn()`` and the seconds it took: wall-clock, and CPU time of this process.

    With one torch thread, CPU seconds are what the run would take on an otherwise idle core, so they give
    an estimate of the unloaded time even when other work shares the machine.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
