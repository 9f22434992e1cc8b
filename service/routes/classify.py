"""``POST /v1/models/{m}/classify``: PNG/JPEG in (multipart files or a raw body), top-k labels out."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request

from service.deps import ManagerDep, SettingsDep, read_body
from service.errors import ApiError, bad_request
from service.images import preprocess, softmax
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


async def _images(request: Request, limit: int) -> list[tuple[str, bytes]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        try:
            form = await request.form(max_part_size=limit)
        except Exception as exc:  # the multipart parser raises its own types for malformed bodies
            raise bad_request(f"malformed multipart body: {exc}") from None
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise bad_request("multipart body holds no file; send the image(s) in a field named 'file'")
        return [(str(f.filename or "image"), await f.read()) for f in files]  # type: ignore[union-attr]
    if content_type in ("image/png", "image/jpeg"):
        return [("image", await read_body(request, limit))]
    raise ApiError(
        415,
        f"send multipart/form-data with 'file' fields, or an image/png or image/jpeg body, not "
        f"{content_type or 'no Content-Type'}",
    )


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
    settings: SettingsDep,
    top_k: int = Query(3, ge=1, le=1000, description="classes per image"),
) -> dict[str, Any]:
    started = time.perf_counter()
    served = manager.get(model)
    m = served.model
    try:
        images = await _images(request, settings.max_body_bytes)
        x = np.stack([preprocess(data, m, name) for name, data in images])
    except ApiError:
        served.batcher.metrics.count("bad_request")
        raise
    logits = await served.batcher.infer(x, settings.request_timeout_s)  # counts its own refusals and timeouts
    probs = softmax(logits.astype(np.float64))
    k = min(top_k, probs.shape[1])
    predictions = []
    for (name, _), row in zip(images, probs, strict=True):
        top = np.argsort(-row, kind="stable")[:k]
        predictions.append(
            {
                "filename": name,
                "top": [{"label": m.labels[i], "index": int(i), "probability": float(row[i])} for i in top],
            }
        )
    served.batcher.metrics.count("success")
    served.batcher.metrics.request_seconds.observe(time.perf_counter() - started)
    return {"model_name": model, "model_version": str(m.version), "predictions": predictions}
