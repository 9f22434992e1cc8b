"""``POST /v2/models/{m}[/versions/{v}]/infer``: the v2 inference route, served by :mod:`service.pipeline`.

The routes live in the app's router like every other route (so they are documented and routed as usual),
but their handler is plain ASGI: headers and the body go straight to :func:`service.pipeline.infer_http`,
with no per-request pydantic, dependency injection or response class, which together cost more than
decoding a binary tensor. :class:`InferenceRoutes`, the innermost user middleware, hands matching requests to
those same route objects before FastAPI's exception middleware and full route table: every middleware added
to the app still wraps inference, and there is one handler, :func:`serve_infer`. The body is read as raw
bytes whatever its Content-Type (tritonclient sends none). A client that disconnects while its request waits
cancels it (:class:`RequestStream`). In the server (tracing off), bnfold's HTTP protocol answers most inference
requests itself (:mod:`service.http_protocol`); the rest (``Expect: 100-continue``, pipelined, percent-encoded
paths) reach these handlers from :class:`InferenceFront`, its outermost app, past every layer of the app.
With tracing on, they go through the app's middleware as above.

FastAPI documents the routes from :func:`infer_newest` / :func:`infer_version` (path parameters, response
model) and :data:`OPENAPI_BODY`; those functions only declare signatures: :func:`serve_infer` is what runs.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import Match, Route

from service.body import read_body, whole_body
from service.draining import DrainingConnections
from service.http_infer import Gone, answer
from service.http_protocol import ON_DISCONNECT
from service.schemas import ERROR_RESPONSES, InferResponse, schema_ref

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": schema_ref("InferRequest")},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header (its length in Inference-Header-Content-Length) then raw tensors",
            },
        },
    }
}


class RequestStream:
    """The request body, read whole; once it is read, the client going away cancels the request's task, so a
    request that is still queued is dropped before it reaches ONNX Runtime (counted ``cancelled``; one already
    in a running batch finishes with the batch, its answer unsent).

    The disconnect comes from bnfold's HTTP protocol (:data:`service.http_protocol.ON_DISCONNECT` in the
    scope: a callback, no task per request); under another ASGI server a request is not cancelled."""

    __slots__ = ("_receive", "_watch", "disconnected")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._receive = receive
        self._watch: Callable[[Callable[[], None] | None], None] | None = scope.get(ON_DISCONNECT)
        self.disconnected = False

    async def read(self, headers: Mapping[str, str], limit: int) -> bytes:
        """The whole body (at most ``limit`` bytes, see :mod:`service.body`); then the watch begins."""
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body = whole_body(headers, [message.get("body", b"")], limit)  # the common case: one message
        else:
            body = await read_body(headers, self._chunks(message), limit)
        if self._watch is not None:
            task = asyncio.current_task()
            if task is not None:
                self._watch(functools.partial(self._gone, task))
        return body

    async def _chunks(self, message: MutableMapping[str, Any]) -> AsyncIterator[bytes]:
        while message["type"] == "http.request":
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return
            message = await self._receive()

    def _gone(self, task: asyncio.Task[Any]) -> None:
        self.disconnected = True
        task.cancel()

    def close(self) -> None:
        """Stop watching (before the answer is sent: a finished request is not cancelled)."""
        if self._watch is not None:
            self._watch(None)


def serve_infer(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
    """The router's handler: :func:`answer_infer` with the app's model manager."""
    return answer_infer(scope["app"].state.manager, scope, receive, send)


async def answer_infer(manager: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one inference request (:func:`service.http_infer.answer`) over ASGI."""
    params = scope["path_params"]
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    stream = RequestStream(scope, receive)
    try:
        status, raw, body = await answer(
            manager, params["model"], params.get("version"), headers, stream.read, lambda: stream.disconnected
        )
    except Gone:
        return  # the client is gone: nobody to answer
    finally:
        stream.close()
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def infer_newest(model: str) -> InferResponse:  # pragma: no cover - documentation only
    """Run the newest version of the model on the request's tensors (JSON or binary tensor data)."""
    raise NotImplementedError("serve_infer answers this route")


async def infer_version(model: str, version: str) -> InferResponse:  # pragma: no cover - documentation only
    """Run the given version of the model on the request's tensors (JSON or binary tensor data)."""
    raise NotImplementedError("serve_infer answers this route")


class AsgiRoute(APIRoute):
    """An APIRoute documented from ``signature`` and answered by the plain ASGI ``handler``."""

    def __init__(
        self,
        path: str,
        signature: Callable[..., Any],
        handler: Callable[[Scope, Receive, Send], Awaitable[None]],
        **kw: Any,
    ) -> None:
        super().__init__(path, signature, **kw)
        self.app = handler


def routes() -> list[AsgiRoute]:
    """The inference routes, to put first in the app's router (they are the hot path)."""
    common: dict[str, Any] = {
        "methods": ["POST"],
        "response_model": InferResponse,
        "responses": ERROR_RESPONSES,
        "openapi_extra": OPENAPI_BODY,
        "tags": ["inference"],
    }
    return [
        AsgiRoute(
            "/v2/models/{model}/infer", infer_newest, serve_infer, summary="Inference (newest version)", **common
        ),
        AsgiRoute(
            "/v2/models/{model}/versions/{version}/infer", infer_version, serve_infer, summary="Inference", **common
        ),
    ]


class InferenceRoutes:
    """ASGI middleware that hands inference requests to the router's own inference routes (:func:`routes`)
    before FastAPI's exception middleware, exit stack and full route table. Added first, it is the innermost
    user middleware: every middleware added after it still wraps inference; a request it does not match
    goes on to the router (where the same routes would answer it too)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], routes: list[AsgiRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child = Route.matches(route, scope)
                if match is Match.FULL:
                    scope.update(child)
                    await route.app(scope, receive, send)
                    return
        await self.app(scope, receive, send)


INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


class InferenceFront:
    """The server's outermost ASGI app when tracing is off: an inference request goes from uvicorn straight to
    :func:`answer_infer` (with ``Connection: close`` while draining, :class:`DrainingConnections`), past
    uvicorn's proxy-headers middleware, FastAPI, Starlette's error middleware and every app middleware, which
    together cost a request more than its own path does (benchmarks/RESULTS.md). Everything else (lifespan,
    other routes) goes to ``fallback``: the app as uvicorn would have run it.

    The path patterns are the router's own (:func:`routes`: ``{model}`` and ``{version}`` match one path
    segment), so a request is answered the same either way; only the layers it passes differ.
    """

    answers_inference = True  # bnfold's HTTP protocol answers inference itself for this app (service.http_protocol)

    def __init__(self, fallback: App, manager: Any) -> None:
        self.fallback = fallback
        self.manager = manager
        self.infer = DrainingConnections(self._infer, manager)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Not a coroutine: it returns the handler's own awaitable (no frame of its own per request)."""
        if scope["type"] == "http" and scope["method"] == "POST":
            params = self.route(scope["path"])
            if params is not None:
                scope["path_params"] = params
                return self.infer(scope, receive, send)
        return self.fallback(scope, receive, send)

    @staticmethod
    def route(path: str) -> dict[str, str | None] | None:
        """``{"model": ..., "version": ... or None}`` when a POST to ``path`` is inference, else None."""
        match = INFER_PATH.fullmatch(path)
        return None if match is None else match.groupdict()

    def _infer(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return answer_infer(self.manager, scope, receive, send)
