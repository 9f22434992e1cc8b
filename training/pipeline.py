"""The training pipeline: data -> model -> optimisation -> population statistics -> checkpoint -> plots.

``run_training(config)`` is what ``bnfold-train`` calls. It is deterministic on CPU for a given seed: the
sample order of each epoch is a pure function of (seed, epoch) and the learning rate of the step number,
so a run resumed from a checkpoint continues bit for bit as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.checkpoint import Checkpoint, load_checkpoint, load_train_state, save_checkpoint
from training.config import TrainConfig
from training.data import Dataset, load_dataset
from training.data.batches import batches_per_epoch, epoch_permutation, iterate_batches
from training.distributed import DistContext, all_finite, init_distributed, prepare_model, shard, shutdown
from training.errors import CheckpointError, ConfigError, TrainingDiverged
from training.loop import evaluate, input_batches, to_device, train_step
from training.metrics import MetricsLog, plot_curves
from training.models import build_model
from training.population import batchnorm_layers, recalibrate_bn, set_bn_stats_mode
from training.progress import progress_bar
from training.schedule import lr_at
from training.sync_bn import convert_to_plain

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    checkpoint: Path | None
    step: int
    val_acc: float
    val_acc_ema: float | None = None
    val_acc_recalibrated: float | None = None
    recalibration: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, or AdamW; BN parameters and biases get no weight decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def checkpoint_meta(
    config: TrainConfig, data: Dataset, model_kwargs: dict[str, Any], step: int, epoch: int, **extra: Any
) -> dict[str, Any]:
    """The self-description written into ``checkpoint.json``: everything export and serve need."""
    c, h, w = data.input_shape
    return {
        "model": {"name": config.model, "options": model_kwargs},
        "labels": data.labels,
        "input": {
            "shape": [c, h, w],
            "layout": "NCHW",
            "dtype": "float32",
            "normalization": {"mean": list(data.normalization.mean), "std": list(data.normalization.std)},
            "value_range": [0.0, 1.0],
        },
        "dataset": {
            "name": data.name,
            "data_dir": str(config.data_dir) if config.data_dir else None,
            "image_size": h,
            "val_fraction": config.val_fraction,
            "seed": config.seed,
            "synthetic_samples": config.synthetic_samples,
            "synthetic_classes": config.synthetic_classes,
            "train_samples": int(data.train_x.shape[0]),
            "val_samples": int(data.val_x.shape[0]),
        },
        "bn_statistics": {"mode": config.bn_stats, "momentum": config.bn_momentum, "recalibrated": False},
        "seed": config.seed,
        "step": step,
        "epoch": epoch,
        "config": config.model_dump(mode="json"),
        **extra,
    }


def _restore_weights(ckpt: Checkpoint, model: nn.Module) -> int:
    """Load ``ckpt``'s weights into ``model``; return the step to continue from."""
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"cannot resume from {ckpt.path}: its weights do not match this model ({str(exc).splitlines()[0]})"
        ) from exc
    return int(ckpt.meta["step"])


def _restore_optimizer(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Load the optimizer and torch RNG state saved with ``ckpt``."""
    optim_state, rng = load_train_state(ckpt)
    try:
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot resume from {ckpt.path}: optimizer state does not fit ({exc})") from exc
    torch.set_rng_state(rng)


def _resume_config(config: TrainConfig) -> tuple[TrainConfig, Checkpoint | None]:
    """With ``resume`` set, load that checkpoint and check it was made by a compatible configuration."""
    if config.resume is None:
        return config, None
    ckpt = load_checkpoint(config.resume)
    saved = ckpt.meta.get("config", {})
    for key in ("model", "dataset", "batch_size", "optimizer", "seed", "batch_norm"):
        if key in saved and saved[key] != getattr(config, key):
            raise CheckpointError(
                f"cannot resume from {ckpt.path}: it was trained with {key}={saved[key]!r}, "
                f"this run asks for {key}={getattr(config, key)!r}"
            )
    return config, ckpt


def run_training(config: TrainConfig) -> RunResult:
    """Train ``config.model`` on ``config.dataset``; write metrics, checkpoints and plots to ``config.out``.

    Under ``torchrun`` every process trains on its shard; only rank 0 writes, and only its result carries the
    checkpoint.
    """
    device = resolve_device(config.device)
    ctx = init_distributed(config, device)
    try:
        return _run(config, device, ctx)
    finally:
        shutdown(ctx)


def _load_data(config: TrainConfig) -> Dataset:
    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
        synthetic_samples=config.synthetic_samples,
        synthetic_classes=config.synthetic_classes,
    )


def _build(
    config: TrainConfig, data: Dataset, device: torch.device, ctx: DistContext | None, resume_from: Checkpoint | None
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, dict[str, Any], int]:
    """(model, what trains: the model or its DDP wrapper, optimizer, constructor options, first step)."""
    c, h, _ = data.input_shape
    model_kwargs = config.model_kwargs(c, h, data.num_classes)
    model = build_model(config.model, **model_kwargs)
    set_bn_stats_mode(model, config.bn_stats, config.bn_momentum)
    step = _restore_weights(resume_from, model) if resume_from is not None else 0
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net = prepare_model(model, ctx, config.sync_bn, device) if ctx is not None else model
    model = net.module if ctx is not None else model  # type: ignore[assignment]
    optimizer = make_optimizer(model, config)
    if resume_from is not None:
        _restore_optimizer(resume_from, optimizer)
    return model, net, optimizer, model_kwargs, step


def _plan(config: TrainConfig, n_train: int, world: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, step to stop at) for ``n_train`` samples shared by ``world`` processes."""
    n_local = n_train // world
    if n_local < config.batch_size:
        raise ConfigError(
            f"batch_size {config.batch_size} per process is larger than each of the {world} process(es)' share of "
            f"the training split ({n_local} of {n_train} samples); lower --batch-size or use fewer processes"
        )
    per_epoch = batches_per_epoch(n_local, config.batch_size, drop_last=True)
    total = 1 if config.dry_run else (config.steps or config.epochs * per_epoch)
    return per_epoch, total, min(total, config.stop_after_steps or total)


def _run(config: TrainConfig, device: torch.device, ctx: DistContext | None) -> RunResult:
    started = time.perf_counter()
    main = ctx is None or ctx.is_main
    config, resume_from = _resume_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    data = _load_data(config)
    model, net, optimizer, model_kwargs, step = _build(config, data, device, ctx, resume_from)
    world = ctx.world_size if ctx is not None else 1
    per_epoch, total, stop_at = _plan(config, data.train_x.shape[0], world)
    run_dir = config.out
    if main:
        _claim_run_dir(run_dir, resuming=resume_from is not None, overwrite=config.overwrite, dry_run=config.dry_run)
        if not config.dry_run:
            (run_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    log = MetricsLog(run_dir / "metrics.jsonl") if main and not config.dry_run else None
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    logger.info(
        "training %s on %s (%d train / %d val samples, %s) for %d steps, %d per epoch, on %s%s",
        config.model,
        data.name,
        data.train_x.shape[0],
        data.val_x.shape[0],
        "x".join(map(str, data.input_shape)),
        total,
        per_epoch,
        device,
        f", {world} processes" + (" with SyncBatchNorm" if config.sync_bn else "") if ctx else "",
    )

    run = _Run(config, data, model, model_kwargs, optimizer, device, log, started)
    ckpt_path: Path | None = resume_from.path if resume_from is not None else None
    val_acc = float("nan")
    net.train()
    with progress_bar(total=total, initial=step, enabled=config.progress if main else False, desc="train") as bar:
        window_start, window_samples = time.perf_counter(), 0
        while step < stop_at:
            epoch, offset = divmod(step, per_epoch)
            order = shard(epoch_permutation(data.train_x.shape[0], config.seed, epoch), ctx)
            for xb, yb in iterate_batches(
                data.train_x, data.train_y, config.batch_size, order, drop_last=True, start=offset
            ):
                lr = lr_at(step, total, config.lr, config.schedule, config.warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                xb, yb = to_device(xb, device, config.channels_last), yb.to(device)
                loss, acc = train_step(net, optimizer, xb, yb, config.amp, scaler, lambda v: all_finite(v, ctx))
                if not math.isfinite(loss) or not math.isfinite(acc):
                    raise TrainingDiverged(
                        f"the loss became non-finite at step {step} (lr {lr:g}); training stopped. "
                        + (f"The last good checkpoint is {ckpt_path}. " if ckpt_path else "")
                        + "Lower --lr, or try --optimizer adamw or --amp none."
                    )
                step += 1
                window_samples += xb.shape[0] * world
                if step % config.log_every == 0 or step == stop_at:
                    rate = window_samples / max(1e-9, time.perf_counter() - window_start)
                    window_start, window_samples = time.perf_counter(), 0
                    if log is not None:
                        log.write("step", step=step, epoch=epoch, loss=loss, acc=acc, lr=lr, samples_per_s=rate)
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", samples_s=f"{rate:.0f}")
                bar.update(1)
                if step >= stop_at:
                    break
            if config.dry_run:
                break
            if main and (step % per_epoch == 0 or step in (total, stop_at)):
                val_acc, ckpt_path = _end_of_epoch(run, step, epoch, ckpt_path)

    if config.dry_run:
        _, val_acc = evaluate(model, data.val_x[: config.batch_size], data.val_y[: config.batch_size], device=device)
        logger.info("dry run: 1 training step and 1 validation batch ran; nothing written")
        return RunResult(run_dir, None, step, val_acc, seconds=time.perf_counter() - started)
    if not main:
        return RunResult(run_dir, None, step, val_acc, seconds=time.perf_counter() - started)
    if step < total:
        logger.info("stopped after step %d of %d; resume with --resume %s", step, total, ckpt_path)
        return RunResult(run_dir, ckpt_path, step, val_acc, seconds=time.perf_counter() - started)
    plain = convert_to_plain(model)  # SyncBatchNorm -> BatchNorm: the checkpoint is the single-process format
    return _finish(dataclasses.replace(run, model=plain), step)


@dataclass
class _Run:
    """What the end-of-epoch and end-of-run steps share (rank 0 only)."""

    config: TrainConfig
    data: Dataset
    model: nn.Module
    model_kwargs: dict[str, Any]
    optimizer: torch.optim.Optimizer
    device: torch.device
    log: MetricsLog | None
    started: float

    def evaluate(self) -> tuple[float, float]:
        """Validation loss and accuracy of the model in eval mode."""
        c = self.config
        return evaluate(
            self.model, self.data.val_x, self.data.val_y, device=self.device, amp=c.amp, channels_last=c.channels_last
        )

    def save(self, step: int, epoch: int, tag: str = "", **meta: Any) -> Path:
        """A checkpoint of the model at ``step``, self-described by ``meta`` on top of the run's."""
        doc = checkpoint_meta(self.config, self.data, self.model_kwargs, step, epoch, **meta)
        return save_checkpoint(
            self.config.out, step, self.model, doc, self.optimizer, keep=self.config.keep_checkpoints, tag=tag
        )


def _end_of_epoch(run: _Run, step: int, epoch: int, last_good: Path | None) -> tuple[float, Path]:
    """Evaluate, record and checkpoint (rank 0); returns (validation accuracy, checkpoint)."""
    val_loss, val_acc = run.evaluate()
    if run.log is not None:
        run.log.write(
            "epoch",
            epoch=epoch,
            step=step,
            val_loss=val_loss,
            val_acc=val_acc,
            elapsed_s=time.perf_counter() - run.started,
        )
    logger.info("epoch %d  step %d  val_loss %.4f  val_acc %.4f", epoch, step, val_loss, val_acc)
    _check_finite(run.model, step, last_good)
    return val_acc, run.save(step, epoch, metrics={"val_loss": val_loss, "val_acc": val_acc})


def _claim_run_dir(run_dir: Path, resuming: bool, overwrite: bool, dry_run: bool) -> None:
    """Create ``run_dir``; refuse to mix a new run into an old one unless resuming or told to overwrite."""
    old = run_dir / "checkpoints"
    if not resuming and not dry_run and old.is_dir() and any(old.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"run directory {run_dir} already holds checkpoints; pass --resume {run_dir} to continue that run, "
                "--overwrite to replace it, or another --out"
            )
        logger.info("--overwrite: removing the previous run in %s", run_dir)
        shutil.rmtree(old)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def _check_finite(model: nn.Module, step: int, last_good: Path | None) -> None:
    """Refuse to checkpoint weights or statistics that are no longer finite."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TrainingDiverged(
                f"{name} became non-finite by step {step}; training stopped without saving it. "
                + (f"The last good checkpoint is {last_good}. " if last_good else "")
                + "Lower --lr, or try --optimizer adamw."
            )


def _finish(run: _Run, step: int) -> RunResult:
    """After the last step: population statistics (EMA vs Algorithm 2), final checkpoint, plots."""
    config, data, model = run.config, run.data, run.model
    val_loss, acc_ema = run.evaluate()
    result = RunResult(config.out, None, step, acc_ema, val_acc_ema=acc_ema)
    bn_info: dict[str, Any] = {"mode": config.bn_stats, "momentum": config.bn_momentum, "recalibrated": False}
    if config.recalibrate and batchnorm_layers(model):
        order = epoch_permutation(data.train_x.shape[0], config.seed, epoch=-1)
        batches = input_batches(data.train_x, config.batch_size, run.device, order)
        result.recalibration = recalibrate_bn(model, batches, config.recalibrate_batches)
        val_loss, result.val_acc_recalibrated = run.evaluate()
        result.val_acc = result.val_acc_recalibrated
        bn_info.update(
            recalibrated=True,
            recalibration_batches=config.recalibrate_batches or data.train_x.shape[0] // config.batch_size,
            recalibration_batch_size=config.batch_size,
        )
        logger.info(
            "validation accuracy: %.4f with EMA statistics, %.4f with Algorithm 2 population statistics",
            acc_ema,
            result.val_acc_recalibrated,
        )
    else:
        logger.info("validation accuracy: %.4f", acc_ema)
    metrics = {
        "val_loss": val_loss,
        "val_acc": result.val_acc,
        "val_acc_ema": acc_ema,
        "val_acc_recalibrated": result.val_acc_recalibrated,
        "train_seconds": time.perf_counter() - run.started,
    }
    assert run.log is not None
    run.log.write("final", step=step, **metrics)
    epoch = (step - 1) // batches_per_epoch(data.train_x.shape[0], config.batch_size, True)
    result.checkpoint = run.save(step, epoch, tag="final", metrics=metrics, bn_statistics=bn_info)
    if config.plots:
        plot_curves(run.log.read(), config.out / "curves.png", title=f"{config.model} on {data.name}")
    result.seconds = time.perf_counter() - run.started
    logger.info("checkpoint: %s (%.1f s)", result.checkpoint, result.seconds)
    return result
