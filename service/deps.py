"""Request dependencies as typed ``Annotated`` aliases, and the shared body reader."""

from __future__ import annotations

import hmac
import zlib
from collections.abc import AsyncIterator, Mapping
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


async def read_body(request: Request, limit: int) -> bytes:
    """The body of a Starlette request; see :func:`read_body_from`."""
    return await read_body_from(request.headers, request.stream(), limit)


async def read_body_from(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, refused with 413 above ``limit`` bytes; gzip/deflate Content-Encoding undone.

    ``headers`` must answer lower-case names.
    """
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    encoding = headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        decoder = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            body = decoder.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ApiError(400, f"request body is not valid {encoding} data: {exc}") from None
        if len(body) > limit or decoder.unconsumed_tail:
            raise ApiError(413, f"decompressed request body exceeds the limit of {limit} bytes")
    elif encoding not in ("", "identity"):
        raise ApiError(400, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    return body
