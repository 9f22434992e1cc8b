"""uvicorn's HTTP protocol with one write per response instead of two, and a disconnect callback.

uvicorn writes a response's status line and headers when the app sends ``http.response.start`` and the body
when it sends ``http.response.body``; uvloop's transport hands each write to the kernel at once, so every
response costs two ``write`` syscalls (two TCP segments on the wire, two wake-ups of the client). Profiled
under load (benchmarks/RESULTS.md, 2026-12-04), that second syscall is the largest single cost of a small
request that the server controls.

:class:`CoalescingTransport` holds what is written during one step of the event loop and hands it to the
real transport in one write at the start of the next step (``loop.call_soon``), so a response's head and
body leave together. Nothing else changes: the bytes and their order are the same, a close or an EOF first
writes what is held, and everything but ``write`` is the real transport's own.

A handler that wants to know when its client goes away (the inference route: a queued request is dropped)
calls ``scope[ON_DISCONNECT](callback)``: the protocol calls ``callback()`` if the connection is lost before
the handler calls ``scope[ON_DISCONNECT](None)``, which it does before it answers. uvicorn would say so only
to a task waiting on ``receive()``, one more task per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools; h11 is uvicorn's fallback too
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


ON_DISCONNECT = "bnfold.on_disconnect"


class CoalescingTransport:
    """A transport whose writes in one step of the event loop reach the real transport as one write."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        """Write what is held now (nothing when the connection is already closing: it cannot be sent)."""
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._held)

    def __getattr__(self, name: str) -> Any:  # everything else: the real transport's
        return getattr(self._transport, name)


class CoalescingHttpProtocol(_Base):
    """uvicorn's HTTP protocol (httptools) writing through a :class:`CoalescingTransport`, and telling the
    request being answered when its connection is lost (:data:`ON_DISCONNECT`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, asyncio.get_running_loop())
        self._on_lost: Callable[[], None] | None = None
        super().connection_made(wrapped)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[ON_DISCONNECT] = self._watch  # type: ignore[literal-required]

    def _watch(self, callback: Callable[[], None] | None) -> None:
        self._on_lost = callback

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()
