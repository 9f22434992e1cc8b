"""The inference hot path as plain ASGI: ``POST /v2/models/{m}[/versions/{v}]/infer`` without FastAPI's
routing, dependency injection and response classes, which cost more per request than decoding a binary
tensor. Everything else passes through to the FastAPI app; the FastAPI route for the same paths stays for
the OpenAPI documentation and shares :func:`service.routes.infer.run_infer` with this middleware.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from service.errors import ApiError
from service.routes.infer import media_type, run_infer

logger = logging.getLogger(__name__)

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
Scope = dict[str, Any]


class InferFastPath:
    """ASGI middleware that answers inference requests itself."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        match = INFER_PATH.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
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
            body, extra = await run_infer(scope["app"].state, match[1], match[2], headers, chunks())
            content_type = media_type(extra)
        except ApiError as exc:
            status, body, extra, content_type = (
                exc.status,
                orjson.dumps({"error": exc.message}),
                exc.headers,
                "application/json",
            )
        except Exception:
            logger.exception("unexpected error on POST %s", scope["path"])
            status, body, extra = 500, b'{"error":"internal server error"}', {}
            content_type = "application/json"
        raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
