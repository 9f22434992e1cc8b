"""``POST /v1/models/{m}/classify``: PNG/JPEG in (multipart ``file`` fields or a raw body), top-k labels out.

The route only adapts HTTP to :func:`service.pipeline.classify_http`, which reads, decodes and runs the images.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from service.deps import ManagerDep
from service.pipeline import classify_http
from service.schemas import ERROR_RESPONSES, ClassifyResponse

router = APIRouter(tags=["images"])

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["file"],
                },
                "encoding": {"file": {"contentType": "image/png, image/jpeg"}},
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/v1/models/{model}/classify",
    summary="Classify one or more PNG/JPEG images",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=OPENAPI_BODY,
)
async def classify_images(
    model: str,
    request: Request,
    manager: ManagerDep,
    top_k: int = Query(3, ge=1, le=1000, description="classes per image"),
) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return await classify_http(manager, model, headers, request.stream(), top_k)
