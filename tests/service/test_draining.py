"""DrainingConnections: no cost of its own before the drain, ``Connection: close`` on every response after."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

from service.draining import DrainingConnections


class App:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def run(middleware: DrainingConnections) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def main() -> None:
        await middleware({"type": "http"}, receive, send)

    asyncio.run(main())
    return sent


def test_before_the_drain_the_request_runs_the_wrapped_app_itself() -> None:
    manager = SimpleNamespace(draining=False)
    middleware = DrainingConnections(App(), manager)
    awaitable = middleware({"type": "http"}, None, None)  # type: ignore[arg-type]
    assert getattr(awaitable, "__qualname__", "") == "App.__call__"  # no frame of the middleware's own
    awaitable.close()  # type: ignore[attr-defined]
    assert run(middleware)[0]["headers"] == [(b"content-length", b"0")]


def test_while_draining_every_response_says_connection_close() -> None:
    manager = SimpleNamespace(draining=True)
    sent = run(DrainingConnections(App(), manager))
    assert sent[0]["headers"] == [(b"content-length", b"0"), (b"connection", b"close")]
    assert sent[1] == {"type": "http.response.body", "body": b""}


def test_it_is_taken_for_an_asgi3_app_by_asgiref_which_opentelemetry_wraps_it_with() -> None:
    from asgiref.compatibility import guarantee_single_callable

    middleware = DrainingConnections(App(), SimpleNamespace(draining=False))
    assert guarantee_single_callable(middleware) is middleware
