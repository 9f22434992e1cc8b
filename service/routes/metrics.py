"""``GET /metrics`` in Prometheus text format: with several workers, the sum over every worker."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import MetricsDep
from service.metrics import collecting_registry

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(collecting_registry(m)), media_type=CONTENT_TYPE_LATEST)
