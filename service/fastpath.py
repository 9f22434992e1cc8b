"""The inference hot path as plain ASGI: ``POST /v2/models/{m}[/versions/{v}]/infer`` answered before
FastAPI's middleware stack (telemetry included), routing, dependency injection and response classes, which
together cost more per request than decoding a binary tensor. :class:`InferenceApp` sends every other
request on to FastAPI; the FastAPI route for the same paths stays for the OpenAPI documentation and shares
:func:`service.routes.infer.run_infer` with this module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI

from service.errors import ApiError
from service.routes.infer import media_type, run_infer

logger = logging.getLogger(__name__)

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
Scope = dict[str, Any]


def match_infer(scope: Scope) -> re.Match[str] | None:
    """The (model, version) match when ``scope`` is an inference request, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    return INFER_PATH.match(scope["path"])


async def serve_infer(state: Any, match: re.Match[str], scope: Scope, receive: Any, send: Any) -> None:
    """Answer one inference request: status, headers and body, errors as ``{"error": ...}``."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    status = 200
    try:
        body, extra = await run_infer(state, match[1], match[2], headers, chunks())
        content_type = media_type(extra)
    except ApiError as exc:
        status, body, extra = exc.status, orjson.dumps({"error": exc.message}), exc.headers
        content_type = "application/json"
    except Exception:
        logger.exception("unexpected error on POST %s", scope["path"])
        status, body, extra = 500, b'{"error":"internal server error"}', {}
        content_type = "application/json"
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class InferenceApp(FastAPI):
    """FastAPI, with inference requests answered at the front door (:mod:`service.fastpath`)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        match = match_infer(scope)
        if match is None:
            await super().__call__(scope, receive, send)
        else:
            await serve_infer(self.state, match, scope, receive, send)
