"""Resuming a run: check that a checkpoint was made by a compatible configuration, restore its state.

A resumed run continues bit for bit: the weights and BN statistics, the optimizer state and the torch RNG
state all come from the checkpoint; the sample order and learning rate are functions of the step number.
"""

from __future__ import annotations

import torch
from torch import nn

from contracts.errors import first_line
from training.checkpoint import Checkpoint, load_checkpoint, load_train_state
from training.config import TrainConfig
from training.errors import CheckpointError

# what must match between the checkpoint's configuration and the resuming one
MUST_MATCH = ("model", "dataset", "batch_size", "optimizer", "seed", "batch_norm")


def restore_weights(ckpt: Checkpoint, model: nn.Module) -> int:
    """Load ``ckpt``'s weights into ``model``; return the step to continue from."""
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"cannot resume from {ckpt.path}: its weights do not match this model ({first_line(exc)})"
        ) from exc
    return int(ckpt.meta["step"])


def restore_optimizer(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Load the optimizer and torch RNG state saved with ``ckpt``."""
    optim_state, rng = load_train_state(ckpt)
    try:
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot resume from {ckpt.path}: optimizer state does not fit ({exc})") from exc
    torch.set_rng_state(rng)


def resume_checkpoint(config: TrainConfig) -> Checkpoint | None:
    """With ``resume`` set, load that checkpoint and check it was made by a compatible configuration."""
    if config.resume is None:
        return None
    ckpt = load_checkpoint(config.resume)
    saved = ckpt.meta.get("config", {})
    for key in MUST_MATCH:
        if key in saved and saved[key] != getattr(config, key):
            raise CheckpointError(
                f"cannot resume from {ckpt.path}: it was trained with {key}={saved[key]!r}, "
                f"this run asks for {key}={getattr(config, key)!r}"
            )
    return ckpt
