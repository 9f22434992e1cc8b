"""The training pipeline: data -> model -> optimisation -> population statistics -> checkpoint -> plots.

``run_training(config)`` is what ``bnfold-train`` calls. It is deterministic on CPU for a given seed: the
sample order of each epoch is a pure function of (seed, epoch) and the learning rate of the step number,
so a run resumed from a checkpoint continues bit for bit as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.checkpoint import Checkpoint, checkpoint_meta, save_checkpoint
from training.config import TrainConfig
from training.data import Dataset, load_dataset
from training.data.batches import batches_per_epoch, epoch_permutation, iterate_batches
from training.distributed import DistContext, all_finite, init_distributed, prepare_model, shard, shutdown
from training.errors import ConfigError, TrainingDiverged
from training.loop import evaluate, input_batches, to_device, train_step
from training.metrics import MetricsLog, plot_curves
from training.models import build_model
from training.population import batchnorm_layers, recalibrate_bn, set_bn_stats_mode
from training.progress import progress_bar
from training.resume import restore_optimizer, restore_weights, resume_checkpoint
from training.run_dir import claim_run_dir, hold_run_dir
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
    main: bool = True  # False on a distributed rank other than 0, which neither evaluates nor writes


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


def run_training(config: TrainConfig) -> RunResult:
    """Train ``config.model`` on ``config.dataset``; write metrics, checkpoints and plots to ``config.out``.

    Under ``torchrun`` every process trains on its shard; only rank 0 writes, and only its result carries the
    checkpoint. With ``dry_run`` it runs one step and one validation batch and writes nothing at all.
    """
    device = resolve_device(config.device)
    ctx = init_distributed(config, device)
    try:
        return _run(config, device, ctx)
    finally:
        shutdown(ctx)


def _run(config: TrainConfig, device: torch.device, ctx: DistContext | None) -> RunResult:
    """The run's named steps: set up, build, plan, hold and open the run folder, train, conclude."""
    started = time.perf_counter()
    resume_from = resume_checkpoint(config)
    data = _set_up(config)
    built = _build(config, data, device, ctx, resume_from)
    plan = _plan(config, data.train_x.shape[0], ctx.world_size if ctx is not None else 1)
    writes = (ctx is None or ctx.is_main) and not config.dry_run
    with hold_run_dir(config.out) if writes else contextlib.nullcontext():
        log = _open_run_dir(config, resuming=resume_from is not None) if writes else None
        run = _Run(config, data, built, device, ctx, plan, log, started, step=built.first_step)
        run.last_checkpoint = resume_from.path if resume_from is not None else None
        _log_start(run)
        built.net.train()
        _train(run)
        return _conclude(run)


def _set_up(config: TrainConfig) -> Dataset:
    """Threads and seed for this process, then the dataset."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
        synthetic_samples=config.synthetic_samples,
        synthetic_classes=config.synthetic_classes,
    )


@dataclass
class _Built:
    """What :func:`_build` makes: the model and what trains it."""

    model: nn.Module  # the bare model, what checkpoints hold
    net: nn.Module  # what trains: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    model_kwargs: dict[str, Any]  # the constructor options, written into every checkpoint
    first_step: int  # 0, or the resumed checkpoint's step


def _build(
    config: TrainConfig, data: Dataset, device: torch.device, ctx: DistContext | None, resume_from: Checkpoint | None
) -> _Built:
    """The model (with the resumed weights), its DDP wrapper under torchrun, and the optimizer (resumed too)."""
    c, h, _ = data.input_shape
    model_kwargs = config.model_kwargs(c, h, data.num_classes)
    model = build_model(config.model, **model_kwargs)
    set_bn_stats_mode(model, config.bn_stats, config.bn_momentum)
    step = restore_weights(resume_from, model) if resume_from is not None else 0
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net = prepare_model(model, ctx, config.sync_bn, device) if ctx is not None else model
    model = net.module if ctx is not None else model  # type: ignore[assignment]
    optimizer = make_optimizer(model, config)
    if resume_from is not None:
        restore_optimizer(resume_from, optimizer)
    return _Built(model, net, optimizer, model_kwargs, step)


@dataclass(frozen=True)
class _Plan:
    """How many steps: per epoch, in all, and where this invocation stops (``--stop-after-steps``)."""

    per_epoch: int
    total: int
    stop_at: int


def _plan(config: TrainConfig, n_train: int, world: int) -> _Plan:
    """The step plan for ``n_train`` samples shared by ``world`` processes."""
    n_local = n_train // world
    if n_local < config.batch_size:
        raise ConfigError(
            f"batch_size {config.batch_size} per process is larger than each of the {world} process(es)' share of "
            f"the training split ({n_local} of {n_train} samples); lower --batch-size or use fewer processes"
        )
    per_epoch = batches_per_epoch(n_local, config.batch_size, drop_last=True)
    total = 1 if config.dry_run else (config.steps or config.epochs * per_epoch)
    return _Plan(per_epoch, total, min(total, config.stop_after_steps or total))


def _open_run_dir(config: TrainConfig, resuming: bool) -> MetricsLog:
    """Claim (and heal) the run folder, record the resolved configuration, open the metrics log (rank 0)."""
    claim_run_dir(config.out, resuming=resuming, overwrite=config.overwrite)
    (config.out / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    return MetricsLog(config.out / "metrics.jsonl")


@dataclass
class _Run:
    """One run's parts and progress, shared by its steps. ``log`` is None off rank 0 and in a dry run."""

    config: TrainConfig
    data: Dataset
    built: _Built
    device: torch.device
    ctx: DistContext | None
    plan: _Plan
    log: MetricsLog | None
    started: float
    step: int = 0
    val_acc: float = float("nan")
    last_checkpoint: Path | None = None
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        if self.config.amp == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")

    @property
    def main(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    @property
    def world(self) -> int:
        return self.ctx.world_size if self.ctx is not None else 1

    def evaluate(self) -> tuple[float, float]:
        """Validation loss and accuracy of the model in eval mode."""
        c = self.config
        return evaluate(
            self.built.model,
            self.data.val_x,
            self.data.val_y,
            device=self.device,
            amp=c.amp,
            channels_last=c.channels_last,
        )

    def save(self, epoch: int, tag: str = "", **meta: Any) -> Path:
        """A checkpoint of the model at this step, self-described by ``meta`` on top of the run's."""
        c, b = self.config, self.built
        doc = checkpoint_meta(c, self.data, b.model_kwargs, self.step, epoch, **meta)
        return save_checkpoint(c.out, self.step, b.model, doc, b.optimizer, keep=c.keep_checkpoints, tag=tag)


def _log_start(run: _Run) -> None:
    config, data, plan = run.config, run.data, run.plan
    logger.info(
        "training %s on %s (%d train / %d val samples, %s) for %d steps, %d per epoch, on %s%s",
        config.model,
        data.name,
        data.train_x.shape[0],
        data.val_x.shape[0],
        "x".join(map(str, data.input_shape)),
        plan.total,
        plan.per_epoch,
        run.device,
        f", {run.world} processes" + (" with SyncBatchNorm" if config.sync_bn else "") if run.ctx else "",
    )


@dataclass
class _Throughput:
    """Samples per second over the steps since the last record."""

    start: float = field(default_factory=time.perf_counter)
    samples: int = 0

    def rate(self) -> float:
        """The rate since the last call (or creation); starts the next window."""
        now = time.perf_counter()
        rate = self.samples / max(1e-9, now - self.start)
        self.start, self.samples = now, 0
        return rate


def _train(run: _Run) -> None:
    """Epochs until the plan's stop; at each epoch's end (rank 0) evaluate and checkpoint."""
    plan = run.plan
    enabled = run.config.progress if run.main else False
    with progress_bar(total=plan.total, initial=run.step, enabled=enabled, desc="train") as bar:
        throughput = _Throughput()
        while run.step < plan.stop_at:
            epoch = run.step // plan.per_epoch
            _train_epoch(run, epoch, bar, throughput)
            if run.config.dry_run:
                break
            if run.main and (run.step % plan.per_epoch == 0 or run.step in (plan.total, plan.stop_at)):
                run.val_acc, run.last_checkpoint = _end_of_epoch(run, epoch)


def _train_epoch(run: _Run, epoch: int, bar: Any, throughput: _Throughput) -> None:
    """The rest of ``epoch`` from ``run.step``, in the epoch's seeded order (this process's shard of it)."""
    config, data = run.config, run.data
    order = shard(epoch_permutation(data.train_x.shape[0], config.seed, epoch), run.ctx)
    offset = run.step - epoch * run.plan.per_epoch
    for xb, yb in iterate_batches(data.train_x, data.train_y, config.batch_size, order, drop_last=True, start=offset):
        loss, acc, lr = _step(run, xb, yb)
        run.step += 1
        throughput.samples += xb.shape[0] * run.world
        if run.step % config.log_every == 0 or run.step == run.plan.stop_at:
            rate = throughput.rate()
            if run.log is not None:
                run.log.write("step", step=run.step, epoch=epoch, loss=loss, acc=acc, lr=lr, samples_per_s=rate)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", samples_s=f"{rate:.0f}")
        bar.update(1)
        if run.step >= run.plan.stop_at:
            break


def _step(run: _Run, xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, float, float]:
    """One optimisation step at this step's learning rate: (loss, accuracy, lr). A non-finite loss stops the run."""
    config, built = run.config, run.built
    lr = lr_at(run.step, run.plan.total, config.lr, config.schedule, config.warmup_steps)
    for group in built.optimizer.param_groups:
        group["lr"] = lr
    xb, yb = to_device(xb, run.device, config.channels_last), yb.to(run.device)
    loss, acc = train_step(built.net, built.optimizer, xb, yb, config.amp, run.scaler, lambda v: all_finite(v, run.ctx))
    if not math.isfinite(loss) or not math.isfinite(acc):
        raise TrainingDiverged(
            f"the loss became non-finite at step {run.step} (lr {lr:g}); training stopped. "
            + (f"The last good checkpoint is {run.last_checkpoint}. " if run.last_checkpoint else "")
            + "Lower --lr, or try --optimizer adamw or --amp none."
        )
    return loss, acc, lr


def _end_of_epoch(run: _Run, epoch: int) -> tuple[float, Path]:
    """Evaluate, record and checkpoint (rank 0); returns (validation accuracy, checkpoint)."""
    val_loss, val_acc = run.evaluate()
    if run.log is not None:
        elapsed = time.perf_counter() - run.started
        run.log.write("epoch", epoch=epoch, step=run.step, val_loss=val_loss, val_acc=val_acc, elapsed_s=elapsed)
    logger.info("epoch %d  step %d  val_loss %.4f  val_acc %.4f", epoch, run.step, val_loss, val_acc)
    _check_finite(run.built.model, run.step, run.last_checkpoint)
    return val_acc, run.save(epoch, metrics={"val_loss": val_loss, "val_acc": val_acc})


def _check_finite(model: nn.Module, step: int, last_good: Path | None) -> None:
    """Refuse to checkpoint weights or statistics that are no longer finite."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TrainingDiverged(
                f"{name} became non-finite by step {step}; training stopped without saving it. "
                + (f"The last good checkpoint is {last_good}. " if last_good else "")
                + "Lower --lr, or try --optimizer adamw."
            )


def _conclude(run: _Run) -> RunResult:
    """The result of a dry run, of a rank other than 0, of a run stopped early, or of a finished run."""
    config, data = run.config, run.data

    def result(checkpoint: Path | None) -> RunResult:
        return RunResult(config.out, checkpoint, run.step, run.val_acc, seconds=time.perf_counter() - run.started)

    if config.dry_run:
        n = config.batch_size
        _, run.val_acc = evaluate(run.built.model, data.val_x[:n], data.val_y[:n], device=run.device)
        logger.info("dry run: 1 training step and 1 validation batch ran; nothing written")
        return result(None)
    if not run.main:
        return dataclasses.replace(result(None), main=False)
    if run.step < run.plan.total:
        total, last = run.plan.total, run.last_checkpoint
        logger.info("stopped after step %d of %d; resume with --resume %s", run.step, total, last)
        return result(run.last_checkpoint)
    plain = convert_to_plain(run.built.model)  # SyncBatchNorm -> BatchNorm: the single-process checkpoint format
    return _finish(dataclasses.replace(run, built=dataclasses.replace(run.built, model=plain)))


def _recalibrate(run: _Run) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Algorithm 2's population statistics over one pass of the training split: (report, bn_statistics extras)."""
    config, data = run.config, run.data
    order = epoch_permutation(data.train_x.shape[0], config.seed, epoch=-1)
    batches = input_batches(data.train_x, config.batch_size, run.device, order)
    report = recalibrate_bn(run.built.model, batches, config.recalibrate_batches)
    return report, {
        "recalibrated": True,
        "recalibration_batches": config.recalibrate_batches or data.train_x.shape[0] // config.batch_size,
        "recalibration_batch_size": config.batch_size,
    }


def _finish(run: _Run) -> RunResult:
    """After the last step: population statistics (EMA vs Algorithm 2), final checkpoint, plots."""
    config, data = run.config, run.data
    val_loss, acc_ema = run.evaluate()
    result = RunResult(config.out, None, run.step, acc_ema, val_acc_ema=acc_ema)
    bn_info: dict[str, Any] = {"mode": config.bn_stats, "momentum": config.bn_momentum, "recalibrated": False}
    if config.recalibrate and batchnorm_layers(run.built.model):
        result.recalibration, extras = _recalibrate(run)
        bn_info.update(extras)
        val_loss, result.val_acc_recalibrated = run.evaluate()
        result.val_acc = result.val_acc_recalibrated
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
    run.log.write("final", step=run.step, **metrics)
    epoch = (run.step - 1) // run.plan.per_epoch  # each process's share of an epoch, as the loop counts it
    result.checkpoint = run.save(epoch, tag="final", metrics=metrics, bn_statistics=bn_info)
    if config.plots:
        plot_curves(run.log.read(), config.out / "curves.png", title=f"{config.model} on {data.name}")
    result.seconds = time.perf_counter() - run.started
    logger.info("checkpoint: %s (%.1f s)", result.checkpoint, result.seconds)
    return result
