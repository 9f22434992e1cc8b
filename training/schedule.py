"""Learning-rate schedules as pure functions of the step, so resume needs only the step number."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str, warmup_steps: int = 0) -> float:
    """Learning rate for optimisation step ``step`` (0-based) of ``total_steps``.

    Linear warm-up over ``warmup_steps``, then ``constant``, ``cosine`` (to zero at the end) or ``step``
    (divide by 10 at 50% and 75% of training).
    """
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return base_lr * (0.1 ** int(progress >= 0.5)) * (0.1 ** int(progress >= 0.75))
    raise ValueError(f"unknown schedule {schedule!r}; valid: constant, cosine, step")
