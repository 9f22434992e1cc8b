"""uvicorn's HTTP protocol with one write per response instead of two, and a disconnect callback.

uvicorn writes a response's status line and headers when the app sends ``http.response.start`` and the body
when it sends ``http.response.body``; uvloop's transport hands each write to the kernel at once, so every
response costs two ``write`` syscalls (two TCP segments on the wire, two wake-ups of the client). Profiled
under load (benchmarks/RESULTS.md, 2026-12-04), that second syscall is the largest single cost of a small
request that the server controls.

:class:`CoalescingTransport` holds what is written during one step of the event loop and hands it to the
real transport in one write at the start of the next step (``loop.call_soon``), so a response's head and
body leave together. Nothing else changes: the bytes and their order are the same, a close or an EOF first
writes what is held, and everything but ``write`` is the real transport's own. An inference answer, already
one write, goes out at once (:meth:`CoalescingTransport.write_now`): ahead of the metric updates that the
same step defers to its end (:mod:`service.tally`), so they no longer delay the client.

A handler that wants to know when its client goes away (the inference route: a queued request is dropped)
calls ``scope[ON_DISCONNECT](callback)``: the protocol calls ``callback()`` if the connection is lost before
the handler calls ``scope[ON_DISCONNECT](None)``, which it does before it answers. uvicorn would say so only
to a task waiting on ``receive()``, one more task per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from service import eager
from service.body import body_too_large, whole_body
from service.http_infer import Gone, answer

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    _Base: type = HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools; h11 is uvicorn's fallback too
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base


ON_DISCONNECT = "bnfold.on_disconnect"
logger = logging.getLogger(__name__)


class _NoEvent:
    """Stands in for the ``asyncio.Event`` uvicorn sets on a request's cycle when its connection is lost."""

    @staticmethod
    def set() -> None:
        return None


NO_EVENT = _NoEvent()


class _Closed:
    """The cycle of a request parsed after an answer closed its connection (an answer given while the rest of
    the same read was still to be parsed): never served, as RFC 9112 section 9.6 asks. uvicorn's own parser
    callbacks see a finished response and do nothing."""

    response_complete = True
    keep_alive = False
    disconnected = True
    more_body = False
    message_event = NO_EVENT


CLOSED = _Closed()


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

    def write_now(self, data: bytes) -> None:
        """Write what is held and then ``data`` now, in this step: for a response that is already one write
        (an inference answer), so it leaves before the end-of-step work (:mod:`service.tally`)."""
        if self._held:
            self.flush()
        if not self._transport.is_closing():
            self._transport.write(data)

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


class Exchange:
    """One inference request that :class:`HttpProtocol` answers itself: the attributes of uvicorn's
    ``RequestResponseCycle`` that uvicorn's protocol reads (``response_complete``, ``keep_alive``,
    ``disconnected``, ``message_event``), the request's path parameters and headers, and its body so far: the
    pieces the parser handed over, kept as they came (a body read in one piece is never copied here)."""

    __slots__ = (
        "disconnected",
        "headers",
        "keep_alive",
        "model",
        "oversized",
        "parts",
        "response_complete",
        "returned_after",
        "size",
        "version",
    )
    message_event = NO_EVENT

    def __init__(self, keep_alive: bool, model: str, version: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        self.keep_alive = keep_alive
        self.model = model
        self.version = version
        self.headers = headers
        self.parts: list[bytes] = []
        self.size = 0  # bytes of body arrived
        self.oversized = False  # more than the body limit arrived: nothing more is kept
        self.response_complete = False
        self.disconnected = False
        self.returned_after: float | None = None  # how soon its client sends again after an answer (seconds)

    def add(self, part: bytes, limit: int) -> None:
        """One more piece of the body; past ``limit`` bytes in all, every piece is dropped (answered 413)."""
        if self.oversized:
            return
        self.size += len(part)
        if self.size > limit:
            self.oversized, self.parts = True, []
        else:
            self.parts.append(part)

    async def read(self, headers: Mapping[str, str], limit: int) -> bytes:
        """The whole body, held to the limits of :mod:`service.body`."""
        if self.oversized:
            raise body_too_large(headers, limit)
        return whole_body(headers, self.parts, limit)


class HttpProtocol(_Base):
    """uvicorn's HTTP protocol (httptools) writing through a :class:`CoalescingTransport`, telling the request
    being answered when its connection is lost (:data:`ON_DISCONNECT`), and answering inference itself.

    An inference request (a POST that :meth:`~service.routes.infer.InferenceFront.route` takes for one) with no
    other request of its connection in flight, no ``Expect: 100-continue`` and no percent-encoding in its path is an
    :class:`Exchange`: its body is collected as it arrives (up to the body limit), and when it is complete it is
    answered through :func:`service.http_infer.answer`, started at once (:func:`service.eager.start`: a lone
    request's whole answer runs in the step that read its last byte; one that waits for its batch goes on in a
    Task), which writes status line, uvicorn's default headers (``date``, ``server``), the response's headers and
    the body in one write, with ``Connection: close`` when the client or the drain asks for it. No ASGI scope,
    messages or app layers are built for it; every other request takes uvicorn's own path through the app. With
    tracing on, or when the server's app is not an :class:`~service.routes.infer.InferenceFront`, every request
    does.

    It reads uvicorn's httptools protocol state (``url``, ``headers``, ``expect_100_continue``, ``cycle``,
    ``tasks``, ``on_response_complete``, ``_unset_keepalive_if_required``, ``STATUS_LINE``), the same from
    uvicorn 0.29 (the lowest version pyproject.toml allows) to 0.55 (checked against both sources);
    tests/service/test_http_exchange.py fails if a later uvicorn changes it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        front = _Base is HttpToolsProtocol and getattr(app, "answers_inference", False) is True
        self._front: Any = app if front else None  # the InferenceFront
        # uvicorn's default headers (date, server) as response-head bytes; uvicorn puts a new list in place
        # each time the date changes (once a second), so the bytes are made again only then
        self._defaults: list[tuple[bytes, bytes]] | None = None
        self._default_head = b""
        self._answered_at: float | None = None  # perf_counter() at this connection's last inference answer
        self._came_back_after: float | None = None  # the seconds its last request came after the answer before

    def connection_made(self, transport: asyncio.Transport) -> None:
        wrapped: Any = CoalescingTransport(transport, asyncio.get_running_loop())
        self._on_lost: Callable[[], None] | None = None
        super().connection_made(wrapped)

    def on_message_begin(self) -> None:
        self._unset_keepalive_if_required()  # an answer given earlier in this read armed it: a request runs now
        super().on_message_begin()
        self.scope[ON_DISCONNECT] = self._watch

    def _watch(self, callback: Callable[[], None] | None) -> None:
        self._on_lost = callback

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()

    # ---- inference answered here -------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        if self.transport.is_closing():  # an earlier answer in this read closed the connection
            self.cycle: Any = CLOSED
            return
        exchange = self._exchange()
        if exchange is None:
            super().on_headers_complete()
        else:
            self.cycle = exchange

    def _exchange(self) -> Exchange | None:
        """An :class:`Exchange` for this request when this protocol answers it (see the class docstring)."""
        front, cycle, parser = self._front, self.cycle, self.parser
        if front is None or self.expect_100_continue or (cycle is not None and not cycle.response_complete):
            return None
        if parser.get_method() != b"POST" or parser.should_upgrade():
            return None
        raw = httptools.parse_url(self.url).path
        if b"%" in raw:
            return None
        params = front.route(raw.decode("ascii"))
        if params is None:
            return None
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        return Exchange(keep_alive, params["model"], params["version"], self.headers)

    def on_body(self, body: bytes) -> None:
        exchange = self.cycle
        if not isinstance(exchange, Exchange):
            super().on_body(body)
        else:  # over the limit, the rest is read and dropped, then answered 413, as uvicorn's path does
            exchange.add(body, self._front.manager.settings.max_body_bytes)

    def on_message_complete(self) -> None:
        exchange = self.cycle
        if not isinstance(exchange, Exchange):
            super().on_message_complete()
            return
        if self._answered_at is not None:  # how soon this client came back: the batcher may wait for it next time
            gap, before = time.perf_counter() - self._answered_at, self._came_back_after
            self._came_back_after = gap
            # the slower of its last two returns: one quick return by chance (a random pause) is not a client
            # that sends again as soon as it is answered
            exchange.returned_after = None if before is None else max(gap, before)
        try:
            task = eager.start(self.loop, self._answer(exchange))  # a lone request is answered right here
        except Exception:  # past the error policy: a bug. Logged, not the parser's "400 Invalid HTTP request"
            logger.exception("answering an inference request failed; closing its connection")
            self.transport.close()
            return
        if task is None:
            return
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._on_lost = functools.partial(self._gone, exchange, task)

    @staticmethod
    def _gone(exchange: Exchange, task: asyncio.Task[None]) -> None:
        exchange.disconnected = True
        task.cancel()

    async def _answer(self, exchange: Exchange) -> None:
        manager = self._front.manager
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in exchange.headers}
        try:
            status, raw, body = await answer(
                manager,
                exchange.model,
                exchange.version,
                headers,
                exchange.read,
                lambda: exchange.disconnected,
                exchange.returned_after,
            )
        except Gone:
            return  # the client is gone: nobody to answer
        finally:
            self._on_lost = None
        if exchange.disconnected:
            return
        keep_alive = exchange.keep_alive and not manager.draining
        defaults = self.server_state.default_headers
        if defaults is not self._defaults:
            self._defaults, self._default_head = defaults, b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        head = [STATUS_LINE[status], self._default_head]
        for name, value in raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        self.transport.write_now(b"".join(head) + body)
        self._answered_at = time.perf_counter()
        exchange.response_complete = True
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()
