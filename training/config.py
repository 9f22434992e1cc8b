"""The training configuration: one validated pydantic model, loadable from TOML and overridable by flags."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts.errors import validation_problems
from training.errors import ConfigError


class TrainConfig(BaseModel):
    """Everything that decides a training run. Written, resolved, into the run directory as ``config.json``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # model
    model: str = "convnet"
    model_options: dict[str, Any] = Field(default_factory=dict)
    batch_norm: bool = True
    activation: Literal["relu", "sigmoid"] | None = None
    # data
    dataset: str = "digits"
    data_dir: Path | None = None
    image_size: int | None = Field(default=None, ge=1)
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    synthetic_samples: int = Field(default=2000, ge=10)
    synthetic_classes: int = Field(default=4, ge=2, le=6)
    # optimisation
    batch_size: int = Field(default=64, ge=2)
    epochs: int = Field(default=12, ge=1)
    steps: int | None = Field(default=None, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    seed: int = 0
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1)
    sync_bn: bool = False
    dist_timeout_s: float = Field(default=120.0, gt=0)
    # BatchNorm population statistics
    bn_stats: Literal["ema", "cumulative"] = "ema"
    bn_momentum: float = Field(default=0.1, gt=0.0, le=1.0)
    recalibrate: bool = True
    recalibrate_batches: int | None = Field(default=None, ge=1)
    # output
    out: Path = Path("runs/default")
    log_every: int = Field(default=10, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    plots: bool = True
    progress: bool | None = None
    resume: Path | None = None
    overwrite: bool = False
    stop_after_steps: int | None = Field(default=None, ge=1)
    dry_run: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.amp == "fp16" and self.device == "cpu":
            raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' on CPU")
        return self

    def model_kwargs(self, in_channels: int, image_size: int, num_classes: int) -> dict[str, Any]:
        """Constructor options for ``build_model``: the common ones, then ``model_options`` on top."""
        kwargs: dict[str, Any] = {
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": image_size,
            "batch_norm": self.batch_norm,
        }
        if self.activation is not None:
            kwargs["activation"] = self.activation
        kwargs.update(self.model_options)
        return kwargs


def load_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Read ``path`` (TOML, optional), apply ``overrides`` (flags given on the command line), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data.update(overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid training configuration{where}: {problems}") from exc
