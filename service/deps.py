"""Request dependencies as typed ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.manager import ModelManager
from service.metrics import Metrics
from service.settings import Settings


def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


ManagerDep = Annotated[ModelManager, Depends(get_manager)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Model control needs the configured key (``Authorization: Bearer <key>`` or ``X-API-Key``)."""
    if settings.api_key is None:
        raise ApiError(403, "model control is disabled: set BNFOLD_API_KEY to enable /v2/repository/*")
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>' or 'X-API-Key')")


ApiKeyDep = Depends(require_api_key)
