"""Model metadata, readiness and configuration, for the newest or a given version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import ManagerDep
from service.manager import Served
from service.model_config import config_json
from service.model_config import model_config as served_config
from service.schemas import ERROR_RESPONSES

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)


def metadata(served: Served, all_versions: list[int], note: str = "") -> dict[str, Any]:
    """v2 model metadata; ``note`` says why an older version serves when a newer one failed to load."""
    m = served.model
    doc: dict[str, Any] = {
        "name": m.name,
        "versions": [str(v) for v in all_versions],
        "platform": m.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.shape]} for t in m.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.shape]} for t in m.outputs],
        "parameters": {
            "version": str(m.version),
            "execution_provider": m.provider,
            "execution": m.execution(),
            "labels": m.labels,
            "input": m.metadata.get("bnfold.input"),
            "fold_summary": m.metadata.get("bnfold.fold_summary"),
            "precision": m.metadata.get("bnfold.precision", "float32"),
        },
    }
    if note:
        doc["parameters"]["load_note"] = note
    return doc


def config(served: Served) -> dict[str, Any]:
    """The configuration the version is served with, in Triton's JSON form (:mod:`service.model_config`)."""
    return config_json(served_config(served.model))


@router.get("/v2/models/{model}", summary="Model metadata (newest version)")
@router.get("/v2/models/{model}/versions/{version}", summary="Model metadata")
async def model_metadata(model: str, manager: ManagerDep, version: str | None = None) -> dict[str, Any]:
    served = manager.get(model, version)
    entry = manager.index.get(model)
    return metadata(served, sorted(manager.models[model]), entry.reason if entry else "")


@router.get("/v2/models/{model}/ready", summary="Model readiness (newest version)")
@router.get("/v2/models/{model}/versions/{version}/ready", summary="Model readiness")
async def model_ready(model: str, manager: ManagerDep, version: str | None = None) -> dict[str, Any]:
    served = manager.get(model, version)
    return {"name": model, "version": str(served.model.version), "ready": True}


@router.get("/v2/models/{model}/config", summary="Model configuration (newest version)")
@router.get("/v2/models/{model}/versions/{version}/config", summary="Model configuration")
async def model_config(model: str, manager: ManagerDep, version: str | None = None) -> dict[str, Any]:
    return config(manager.get(model, version))
