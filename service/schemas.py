"""Pydantic models that document the HTTP API in OpenAPI (/docs). The hot path never instantiates them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TensorParameters(BaseModel):
    binary_data_size: int | None = Field(None, description="bytes of this tensor in the binary part of the body")


class InferInput(BaseModel):
    name: str = Field(..., examples=["input"])
    shape: list[int] = Field(..., examples=[[1, 1, 8, 8]])
    datatype: str = Field(..., examples=["FP32"])
    parameters: TensorParameters | None = None
    data: list[Any] | None = Field(None, description="row-major values, flat or nested; omit with binary data")


class OutputParameters(BaseModel):
    binary_data: bool | None = Field(None, description="return this output as binary tensor data")
    classification: int | None = Field(None, description="return the top-k classes as 'score:index:label'")


class InferRequestedOutput(BaseModel):
    name: str = Field(..., examples=["logits"])
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    binary_data_output: bool | None = Field(None, description="return every output as binary tensor data")
    priority: int | None = Field(None, description="priority level, 1 the highest (0: the model's default)")
    timeout: int | None = Field(None, description="queue timeout in microseconds, if the queue policy allows it")


class InferRequest(BaseModel):
    """A v2 inference request. With binary tensors, this JSON is followed by the raw tensor bytes and its
    length is sent in the ``Inference-Header-Content-Length`` header."""

    id: str | None = None
    inputs: list[InferInput]
    outputs: list[InferRequestedOutput] | None = None
    parameters: RequestParameters | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: TensorParameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


class ErrorResponse(BaseModel):
    error: str


class ClassPrediction(BaseModel):
    label: str
    index: int
    probability: float


class ImagePrediction(BaseModel):
    filename: str | None = None
    top: list[ClassPrediction]


class ClassifyResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[ImagePrediction]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "bad request: malformed body, wrong shape, datatype or values",
        404: "unknown model or version",
        413: "body or image too large",
        415: "not a PNG or JPEG image",
        500: "a server bug: the message carries a request id to find it in the log",
        503: "queue full (Retry-After) or not ready",
        504: "timed out",
    }.items()
}


BODY_MODELS = (InferRequest,)  # request bodies documented through openapi_extra, not a route signature


def schema_ref(name: str) -> dict[str, str]:
    """A reference to a component schema (see :func:`add_body_schemas`)."""
    return {"$ref": f"#/components/schemas/{name}"}


def add_body_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Define :data:`BODY_MODELS` (and the models they use) under ``components.schemas`` of ``openapi``, so that
    every ``$ref`` in it resolves."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in BODY_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault(model.__name__, schema)
    return openapi
