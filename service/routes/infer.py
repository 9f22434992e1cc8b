"""``POST /v2/models/{m}[/versions/{v}]/infer``: decode -> validate -> batch -> run -> encode.

The body is parsed from raw bytes whatever its Content-Type (tritonclient sends none).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from service.deps import read_body_from
from service.errors import ApiError, bad_request
from service.manager import ModelManager, Served
from service.protocol import HEADER_LENGTH, InferRequest, OutputTensor, classify, decode_request, encode_response
from service.schemas import ERROR_RESPONSES, InferResponse
from service.schemas import InferRequest as InferRequestSchema
from service.settings import Settings

router = APIRouter(tags=["inference"])

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": InferRequestSchema.model_json_schema(ref_template="#/components/schemas/{model}")
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header (its length in Inference-Header-Content-Length) then raw tensors",
            },
        },
    }
}


def validate_input(request: InferRequest, served: Served, allow_non_finite: bool) -> np.ndarray:
    """The one input tensor the model takes, checked for name, datatype, shape and finite values."""
    m = served.model
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise bad_request(f"model {m.name!r} takes exactly one input {m.input_name!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.name != m.input_name:
        raise bad_request(f"model {m.name!r} has no input {tensor.name!r}; its input is {m.input_name!r}")
    if tensor.datatype != m.input_datatype:
        raise bad_request(f"input {tensor.name!r}: datatype {tensor.datatype}, expected {m.input_datatype}")
    if len(tensor.shape) != len(m.sample_shape) + 1 or tuple(tensor.shape[1:]) != m.sample_shape:
        expected = [-1, *m.sample_shape]
        raise bad_request(f"input {tensor.name!r}: shape {list(tensor.shape)}, expected {expected} (-1: batch size)")
    if tensor.shape[0] < 1:
        raise bad_request(f"input {tensor.name!r}: the batch axis must hold at least one sample")
    x = tensor.array
    if not allow_non_finite and x.dtype.kind == "f" and not np.isfinite(x).all():
        raise bad_request(f"input {tensor.name!r} holds NaN or Inf values")
    return x


def build_outputs(request: InferRequest, served: Served, logits: np.ndarray) -> list[OutputTensor]:
    m = served.model
    wanted = request.outputs or []
    if not wanted:
        return [OutputTensor(m.output_name, m.output_datatype, logits, request.binary_output)]
    outputs = []
    for out in wanted:
        if out.name != m.output_name:
            raise bad_request(f"model {m.name!r} has no output {out.name!r}; its output is {m.output_name!r}")
        binary = request.binary_output if out.binary is None else out.binary
        if out.class_count:
            outputs.append(OutputTensor(out.name, "BYTES", classify(logits, out.class_count, m.labels), binary))
        else:
            outputs.append(OutputTensor(out.name, m.output_datatype, logits, binary))
    return outputs


async def run_infer(
    state: Any, model: str, version: str | None, headers: Mapping[str, str], chunks: AsyncIterator[bytes]
) -> tuple[bytes, dict[str, str]]:
    """One inference request, from its headers and body chunks to the response body and extra headers.

    Raises :class:`ApiError` for every expected failure. Shared by the FastAPI route (documentation, and any
    request that reaches it) and :class:`service.fastpath.InferFastPath`, which serves the hot path.
    """
    started = time.perf_counter()
    manager: ModelManager = state.manager
    settings: Settings = state.settings
    served = manager.get(model, version)
    batcher = served.batcher
    metrics = batcher.metrics
    batcher.arriving += 1
    try:
        body = await read_body_from(headers, chunks, settings.max_body_bytes)
        req = decode_request(body, headers.get("inference-header-content-length"))
        x = validate_input(req, served, settings.allow_non_finite)
    except ApiError:
        metrics.count("bad_request")
        raise
    finally:
        batcher.arriving -= 1
    logits = await batcher.infer(x, settings.request_timeout_s)  # counts its own refusals and timeouts
    body_out, extra = encode_response(model, str(served.model.version), req.id, build_outputs(req, served, logits))
    metrics.count("success")
    metrics.request_seconds.observe(time.perf_counter() - started)
    return body_out, extra


def media_type(extra: Mapping[str, str]) -> str:
    """JSON, or octet-stream when binary tensors follow the JSON header."""
    return "application/octet-stream" if HEADER_LENGTH in extra else "application/json"


@router.post(
    "/v2/models/{model}/infer",
    summary="Inference (newest version)",
    response_model=InferResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=OPENAPI_BODY,
)
@router.post(
    "/v2/models/{model}/versions/{version}/infer",
    summary="Inference",
    response_model=InferResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=OPENAPI_BODY,
)
async def infer(model: str, request: Request, version: str | None = None) -> Response:
    lowered = {k.lower(): v for k, v in request.headers.items()}
    body, extra = await run_infer(request.app.state, model, version, lowered, request.stream())
    return Response(body, media_type=media_type(extra), headers=extra)
