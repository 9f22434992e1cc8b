"""Data-parallel training on torch.distributed, launched by ``torchrun``.

``torchrun --nproc-per-node N -m training [--sync-bn] ...`` starts N processes; each trains on its own
shard of every epoch (the epoch's permutation dealt out round-robin, as DistributedSampler does) with
DistributedDataParallel averaging gradients. Backend gloo on CPU, nccl on CUDA. Only rank 0 writes
checkpoints, metrics and plots. Every collective has a bounded timeout, and the processes first agree on
the configuration, so a mismatch ends every rank with the same readable message instead of a hang.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from training.config import TrainConfig
from training.errors import ConfigError
from training.sync_bn import convert_to_sync

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside a distributed launch)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(config: TrainConfig, device: torch.device) -> DistContext | None:
    """Join the process group when launched by torchrun; refuse --sync-bn outside one."""
    world = launched_world_size()
    if world <= 1:
        if config.sync_bn:
            raise ConfigError(
                "--sync-bn needs a distributed launch with at least 2 processes, e.g. "
                "torchrun --nproc-per-node 2 -m training --sync-bn ..."
            )
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=config.dist_timeout_s))
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    try:
        _agree_on_config(config, ctx)
    except BaseException:
        # Tear the group down before the error propagates: a gloo group still alive at interpreter exit
        # aborts the process (SIGABRT, "terminate called without an active exception") and hides exit code 2.
        shutdown(ctx)
        raise
    logger.info("rank %d of %d (%s)", ctx.rank, ctx.world_size, backend)
    return ctx


def _agree_on_config(config: TrainConfig, ctx: DistContext) -> None:
    fingerprint = hashlib.sha256(config.model_dump_json(exclude={"progress"}).encode()).hexdigest()[:16]
    gathered: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, fingerprint)
    if len(set(gathered)) > 1:
        raise ConfigError(
            f"the training configuration differs between processes (fingerprints {gathered}); "
            "launch every rank with the same flags"
        )


def prepare_model(model: nn.Module, ctx: DistContext, sync_bn: bool, device: torch.device) -> nn.Module:
    """SyncBatchNorm (if asked) and DistributedDataParallel around ``model``."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else convert_to_sync(model)
    model.to(device)
    return DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.type == "cuda" else None)


def shard(order: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    """This rank's share of an epoch's sample order: equal-sized, round-robin (DistributedSampler's rule)."""
    if ctx is None:
        return order
    usable = order.shape[0] - order.shape[0] % ctx.world_size
    return order[:usable][ctx.rank :: ctx.world_size]


def all_finite(value: float, ctx: DistContext | None) -> bool:
    """True when ``value`` is finite on every rank (so all ranks stop together on a NaN)."""
    flag = torch.tensor([0.0 if torch.isfinite(torch.tensor(value)) else 1.0])
    if ctx is not None:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() == 0.0)


def shutdown(ctx: DistContext | None) -> None:
    if ctx is not None and dist.is_initialized():
        dist.destroy_process_group()
