"""Service settings from the environment (``BNFOLD_*``) or flags, validated by pydantic-settings.

``get_settings()`` is cached and read when the app is created, never at import time; tests pass their own
``Settings`` to ``create_app``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.buckets import parse_buckets, resolve_buckets


class Settings(BaseSettings):
    """Every knob of the server. Environment variables are ``BNFOLD_`` + the upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="BNFOLD_", extra="ignore", protected_namespaces=())

    repository: Path = Field(Path("model_repository"), description="model repository root (Triton layout)")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in containers)")
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC (v2 GRPCInferenceService) port; 0: no gRPC")
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when it is actually usable, else CPU"
    )
    workers: str = Field(
        "auto", description="worker processes serving the same ports (auto: see service.workers.resolve_workers)"
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per worker (0: the cores split across the workers)"
    )
    intra_op_spinning: Literal["run", "always", "off"] = Field(
        "run", description="intra-op threads spin while a run lasts (run), also between runs (always), or never"
    )
    lone_request_session: bool = Field(
        True, description="CPU: a second session per model on every core, spinning, runs a lone client's requests"
    )
    # CUDA provider options (None: bnfold's default, see service.providers.CudaOptions); refused without CUDA
    cuda_device_id: int | None = Field(None, ge=0, description="GPU to run on")
    cuda_cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] | None = None
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] | None = None
    cuda_gpu_mem_limit: int | None = Field(None, ge=1, description="bytes of GPU memory the arena may take")
    batch_buckets: str = Field("auto", description="auto (powers of two on CUDA, off on CPU), off, or 1,2,4,...")
    model_versions: int = Field(1, ge=1, description="newest versions of each model to load")
    max_batch_size: int | None = Field(None, ge=1, description="override config.pbtxt max_batch_size")
    max_queue_delay_ms: float | None = Field(None, ge=0, description="override the dynamic batching delay")
    max_queue_size: int = Field(512, ge=1, description="queued requests per model version before 503")
    request_timeout_s: float = Field(30.0, gt=0, description="time a request may wait and run before 504")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body (413 above)")
    max_image_pixels: int = Field(50_000_000, ge=1, description="largest image (width x height) before 413")
    allow_non_finite: bool = Field(False, description="accept NaN/Inf input values")
    api_key: SecretStr | None = Field(None, description="key for /v2/repository/*; unset disables model control")
    require_model: bool = Field(True, description="refuse to start when the repository holds no model")
    drain_delay_s: float = Field(1.0, ge=0, description="readiness off this long after SIGTERM before draining")
    graceful_timeout_s: float = Field(30.0, gt=0, description="time to finish in-flight requests on SIGTERM")
    ui: bool = Field(True, description="serve the read-only web page at / (false: no page routes)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tracing: bool = Field(False, description="OpenTelemetry spans per request, exported as OTEL_* configures OTLP")

    @field_validator("batch_buckets")
    @classmethod
    def _buckets(cls, value: str) -> str:
        parse_buckets(value)  # a BucketError (a ValueError) names the value and what was expected
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> str:
        text = str(value).strip().lower()
        if text != "auto" and not (text.isascii() and text.isdigit() and int(text) >= 1):
            raise ValueError(f"BNFOLD_WORKERS (--workers) must be auto or a whole number >= 1, got {value!r}")
        return text

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if isinstance(parse_buckets(self.batch_buckets), tuple) and self.max_batch_size is not None:
            resolve_buckets(self.batch_buckets, True, self.max_batch_size)
        cuda = [n for n in type(self).model_fields if n.startswith("cuda_") and getattr(self, n) is not None]
        if cuda and self.providers == "cpu":
            names = ", ".join(f"BNFOLD_{n.upper()}" for n in cuda)
            raise ValueError(f"{names} set together with BNFOLD_PROVIDERS=cpu: unset them or use auto/cuda")
        return self

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value() else value


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once."""
    return Settings()
