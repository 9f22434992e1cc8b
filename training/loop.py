"""One optimisation step and evaluation: the inner pieces of the training loop."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from training.data.batches import iterate_batches

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    """Mixed-precision context for ``amp`` ("none", "bf16", "fp16") on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move an input batch to ``device`` (in channels_last layout when asked and 4-D)."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: str,
    scaler: torch.amp.GradScaler | None,
    finite: Callable[[float], bool] = math.isfinite,
) -> tuple[float, float]:
    """Forward, backward and update on one mini-batch; returns (loss, accuracy) of the batch.

    ``finite`` decides whether to go on (under torchrun it asks every rank); when it says no, nothing is
    updated and the accuracy is NaN.
    """
    # compute output and loss
    with autocast(x.device, amp):
        logits = model(x)  # (N, num_classes)
        loss = F.cross_entropy(logits.float(), y)
    loss_value = float(loss.detach())
    if not finite(loss_value):
        return loss_value, float("nan")
    # compute gradient and do SGD step
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    acc = float((logits.detach().argmax(1) == y).float().mean())
    return loss_value, acc


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | None = None,
    amp: str = "none",
    channels_last: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` in eval mode on (x, y); restores the mode."""
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size):
        xb, yb = to_device(xb, device, channels_last), yb.to(device)
        with autocast(device, amp):
            logits = model(xb).float()
        total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(1, x.shape[0])
    return total_loss / n, correct / n


def input_batches(
    x: torch.Tensor, batch_size: int, device: torch.device, order: torch.Tensor | None = None
) -> Iterator[torch.Tensor]:
    """Inputs only, in ``order``, full batches only (Algorithm 2 assumes a fixed mini-batch size m)."""
    for xb, _ in iterate_batches(x, x.new_zeros(x.shape[0]), batch_size, order=order, drop_last=True):
        yield xb.to(device)
