"""Model control (``/v2/repository/*``), guarded by the API key; disabled when no key is configured.

With several workers a load or unload runs on every worker before it is answered
(:mod:`service.workers.cluster`); the index is this worker's, which every load and unload keeps equal."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import ApiKeyDep, ManagerDep
from service.errors import ApiError
from service.repository import versions

router = APIRouter(tags=["model control"], dependencies=[ApiKeyDep])


@router.post("/v2/repository/index", summary="Every model in the repository with its state")
async def index(manager: ManagerDep) -> list[dict[str, Any]]:
    out = []
    for entry in manager.scan_index():
        on_disk = versions(manager.settings.repository / entry.name)
        row: dict[str, Any] = {"name": entry.name, "state": entry.state, "reason": entry.reason}
        row["version"] = str(max(entry.versions)) if entry.versions else (str(on_disk[-1]) if on_disk else "")
        row["loaded_versions"] = [str(v) for v in entry.versions]
        out.append(row)
    return out


@router.post("/v2/repository/models/{model}/load", summary="Load or reload a model (newest version)")
async def load(model: str, manager: ManagerDep) -> JSONResponse:
    if manager.cluster is not None:
        return await _everywhere("load", model, manager)
    entry = await manager.load(model)
    if entry.failed:
        return JSONResponse({"error": entry.reason}, status_code=400)
    return JSONResponse({})


@router.post("/v2/repository/models/{model}/unload", summary="Unload a model")
async def unload(model: str, manager: ManagerDep) -> JSONResponse:
    if manager.cluster is not None:
        return await _everywhere("unload", model, manager)
    await manager.unload(model)
    return JSONResponse({})


async def _everywhere(op: str, model: str, manager: ManagerDep) -> JSONResponse:
    status, error = await manager.cluster.control(op, model)
    if status != 200:
        raise ApiError(status, error)
    return JSONResponse({})
