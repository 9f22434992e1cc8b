"""Server metadata, liveness and readiness (a real check: 503 until models are loaded and warm on every worker)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import ManagerDep

router = APIRouter(tags=["health"])
EXTENSIONS = ["classification", "binary_tensor_data", "model_repository", "statistics"]


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnfold")
    except PackageNotFoundError:
        return "unknown"


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "bnfold", "version": server_version(), "extensions": EXTENSIONS}


@router.get("/v2/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", summary="Readiness: models loaded and warmed, not shutting down, every worker so")
async def ready(manager: ManagerDep) -> JSONResponse:
    ok = manager.is_ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)
