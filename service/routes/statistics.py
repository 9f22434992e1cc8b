"""``GET /v2/models/stats``, ``/v2/models/{m}/stats`` and ``/v2/models/{m}/versions/{v}/stats``: Triton's
statistics extension, read back from the Prometheus registry that ``/metrics`` collects
(:mod:`service.statistics`), so the figures are the server's, not one worker's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import ManagerDep, MetricsDep
from service.manager import ModelManager
from service.metrics import Metrics, collecting_registry
from service.schemas import ERROR_RESPONSES
from service.statistics import read_statistics

router = APIRouter(tags=["statistics"], responses=ERROR_RESPONSES)


def served_versions(manager: ModelManager, model: str = "", version: str = "") -> list[tuple[str, str]]:
    """(model, version) pairs the statistics cover: every loaded version, those of ``model``, or one.

    An unknown model or version gets the manager's 404 (or 503 while the model loads), naming what exists.
    """
    if not model:
        return [(name, str(v)) for name in sorted(manager.models) for v in sorted(manager.models[name])]
    served = manager.get(model, version or None)
    if version:
        return [(model, str(served.model.version))]
    return [(model, str(v)) for v in sorted(manager.models[model])]


def statistics(manager: ModelManager, metrics: Metrics, model: str = "", version: str = "") -> dict[str, Any]:
    """Triton's ``{"model_stats": [...]}`` for every loaded version, those of ``model``, or one version."""
    return read_statistics(collecting_registry(metrics), served_versions(manager, model, version))


@router.get("/v2/models/stats", summary="Statistics of every loaded model version")
async def all_statistics(manager: ManagerDep, metrics: MetricsDep) -> dict[str, Any]:
    return statistics(manager, metrics)


@router.get("/v2/models/{model}/stats", summary="Statistics of every loaded version of the model")
@router.get("/v2/models/{model}/versions/{version}/stats", summary="Statistics of one model version")
async def model_statistics(model: str, manager: ManagerDep, metrics: MetricsDep, version: str = "") -> dict[str, Any]:
    return statistics(manager, metrics, model, version)
