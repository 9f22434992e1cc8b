"""Service settings from the environment (``BNFOLD_*``) or flags, validated by pydantic-settings.

``get_settings()`` is cached and read when the app is created, never at import time; tests pass their own
``Settings`` to ``create_app``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: its default)")
    model_versions: int = Field(1, ge=1, description="newest versions of each model to load")
    max_batch_size: int | None = Field(None, ge=1, description="override config.pbtxt max_batch_size")
    max_queue_delay_ms: float | None = Field(None, ge=0, description="override the dynamic batching delay")
    max_queue_size: int = Field(512, ge=1, description="queued requests per model version before 503")
    request_timeout_s: float = Field(30.0, gt=0, description="time a request may wait and run before 504")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body (413 above)")
    allow_non_finite: bool = Field(False, description="accept NaN/Inf input values")
    api_key: SecretStr | None = Field(None, description="key for /v2/repository/*; unset disables model control")
    require_model: bool = Field(True, description="refuse to start when the repository holds no model")
    drain_delay_s: float = Field(1.0, ge=0, description="readiness off this long after SIGTERM before draining")
    graceful_timeout_s: float = Field(30.0, gt=0, description="time to finish in-flight requests on SIGTERM")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value() else value


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once."""
    return Settings()
