"""ASGI middleware: while the server drains (after the first SIGTERM/SIGINT), every response carries
``Connection: close``, so keep-alive clients open a new connection for their next request instead of
reusing one the server is about to close (which could lose a request already on the wire)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Send], Awaitable[None]]


class DrainingConnections:
    """Adds ``Connection: close`` to the responses of requests that start while ``manager.draining`` is true
    (a request already running at the signal answers on a connection whose next request gets the header)."""

    # ``__call__`` is a plain function (below): this marks it as ASGI 3 for asgiref's guarantee_single_callable,
    # which OpenTelemetry's ASGI middleware applies to the app it wraps (it would take it for ASGI 2)
    _asgi_single_callable = True

    def __init__(self, app: ASGIApp, manager: Any) -> None:
        self.app = app
        self.manager = manager

    def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Send) -> Awaitable[None]:
        """Not a coroutine: before the drain it returns the wrapped app's own awaitable, so a request pays no
        frame of its own here (every resumption of a request's task passes through each awaiting frame)."""
        if scope["type"] != "http" or not self.manager.draining:  # decided when the request starts
            return self.app(scope, receive, send)
        return self._closing(scope, receive, send)

    async def _closing(self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Send) -> None:
        manager = self.manager

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and manager.draining:
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)
