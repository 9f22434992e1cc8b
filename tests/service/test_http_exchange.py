"""Inference answered by bnfold's HTTP protocol itself (service.http_protocol.HttpProtocol, Exchange): on the
wire against a real server (keep-alive, pipelining, HTTP/1.0, chunked and gzip bodies, the body limit,
100-continue, errors), and in-process, where the app must not be called for it."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from service.app import create_app
from service.http_protocol import HttpProtocol
from service.server import front
from service.settings import Settings
from tests.service.conftest import ServerProcess, direct_logits
from tests.service.test_app import INFER, binary_request, json_request

LIMIT = 4096


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(model_repo, "--max-body-bytes", str(LIMIT))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def request(body: bytes, headers: dict[str, str], version: str = "1.1", path: str = INFER) -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    if "Transfer-Encoding" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (``buffer`` keeps what arrived after it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed inside a response body"
        rest += chunk
    buffer[:] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def logits(headers: dict[str, str], body: bytes) -> np.ndarray:
    if "inference-header-content-length" in headers:
        length = int(headers["inference-header-content-length"])
        out = orjson.loads(body[:length])["outputs"][0]
        return np.frombuffer(body[length:], np.float32).reshape(out["shape"])
    out = orjson.loads(body)["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    server: ServerProcess, model_repo: Path, digits_val: Any
) -> None:
    xs = [np.asarray(digits_val[0][i : i + 2], np.float32) for i in (0, 2, 4)]
    model = model_repo / "digits" / "1" / "model.onnx"
    bodies = [binary_request(x, parameters={"binary_data_output": True}) for x in xs]
    with connect(server) as sock:
        buffer = bytearray()
        sock.sendall(request(*bodies[0]))
        status, headers, body = read_response(sock, buffer)
        assert status == 200 and "date" in headers and headers.get("connection") != "close"
        np.testing.assert_array_equal(logits(headers, body), direct_logits(model, xs[0]))
        sock.sendall(request(*bodies[1]) + request(*bodies[2]))  # two requests in one write
        for x in xs[1:]:
            status, headers, body = read_response(sock, buffer)
            assert status == 200
            np.testing.assert_array_equal(logits(headers, body), direct_logits(model, x))


def test_http_1_0_gets_its_answer_and_the_connection_closed(server: ServerProcess, digits_val: Any) -> None:
    x = np.asarray(digits_val[0][:1], np.float32)
    with connect(server) as sock:
        sock.sendall(request(json_request(x), {}, version="1.0"))
        status, headers, _ = read_response(sock, bytearray())
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_chunked_gzip_and_100_continue_bodies(server: ServerProcess, model_repo: Path, digits_val: Any) -> None:
    x = np.asarray(digits_val[0][:1], np.float32)
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", x)
    body, headers = binary_request(x)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:100], body[100:])) + b"0\r\n\r\n"
    with connect(server) as sock:
        buffer = bytearray()
        sock.sendall(request(chunked, {**headers, "Transfer-Encoding": "chunked"}))
        status, answer_headers, answer = read_response(sock, buffer)
        assert status == 200
        np.testing.assert_array_equal(logits(answer_headers, answer), expected)
        sock.sendall(request(gzip.compress(json_request(x)), {"Content-Encoding": "gzip"}))
        status, answer_headers, answer = read_response(sock, buffer)
        assert status == 200
        np.testing.assert_array_equal(logits(answer_headers, answer), expected)
    with connect(server) as sock:
        head = request(body, {**headers, "Expect": "100-continue"})
        split = head.index(b"\r\n\r\n") + 4
        sock.sendall(head[:split])
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(head[split:])
        status, answer_headers, answer = read_response(sock, bytearray())
        assert status == 200
        np.testing.assert_array_equal(logits(answer_headers, answer), expected)


def test_errors_and_the_body_limit(server: ServerProcess, digits_val: Any) -> None:
    x = np.asarray(digits_val[0][:1], np.float32)
    with connect(server) as sock:
        buffer = bytearray()
        sock.sendall(request(json_request(x), {}, path="/v2/models/nope/infer"))
        status, _, body = read_response(sock, buffer)
        assert status == 404 and "nope" in orjson.loads(body)["error"]
        sock.sendall(request(b"{" * (LIMIT + 1), {}))
        status, headers, body = read_response(sock, buffer)
        assert status == 413 and headers.get("connection") != "close"
        assert f"exceeds the limit of {LIMIT} bytes (BNFOLD_MAX_BODY_BYTES)" in orjson.loads(body)["error"]
        sock.sendall(request(json_request(x), {}))  # the connection still serves
        assert read_response(sock, buffer)[0] == 200


class Transport:
    """What the protocol writes, and the socket facts uvicorn asks for."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name)

    def set_protocol(self, protocol: Any) -> None:  # pragma: no cover - not called
        pass

    def pause_reading(self) -> None:  # pragma: no cover - bodies here are small
        pass

    def resume_reading(self) -> None:
        pass


async def in_process(model_repo: Path, state: ServerState | None = None) -> tuple[Any, HttpProtocol, Transport]:
    """An app with its models loaded, and one connection of bnfold's protocol to it over a fake transport."""
    app = create_app(Settings(repository=model_repo))
    await app.state.manager.load_all()
    config = uvicorn.Config(front(app), interface="asgi3", proxy_headers=False, lifespan="off", log_level="warning")
    config.load()
    protocol, transport = HttpProtocol(config=config, server_state=state or ServerState(), app_state={}), Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return app, protocol, transport


async def answered(transport: Transport) -> bytes:
    """What the protocol wrote, once a response head is there (waiting 5 s at most)."""
    for _ in range(500):
        if b"\r\n\r\n" in transport.written:
            break
        await asyncio.sleep(0.01)
    return bytes(transport.written)


def test_inference_is_answered_by_the_protocol_without_calling_the_app(model_repo: Path, digits_val: Any) -> None:
    x = np.asarray(digits_val[0][:2], np.float32)
    body, headers = binary_request(x, parameters={"binary_data_output": True})

    async def scenario() -> tuple[list[str], bytes]:
        app = create_app(Settings(repository=model_repo, max_body_bytes=LIMIT))
        await app.state.manager.load_all()
        served = front(app)
        seen: list[str] = []
        inner = served.infer  # the front's ASGI inference handler: uvicorn's path would call it
        served.infer = lambda scope, receive, send: seen.append(scope["path"]) or inner(scope, receive, send)
        config = uvicorn.Config(served, interface="asgi3", proxy_headers=False, lifespan="off", log_level="warning")
        config.load()
        protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        # a body over the limit is not kept: what arrives past the limit is dropped, not buffered
        protocol.data_received(f"POST {INFER} HTTP/1.1\r\nHost: t\r\nContent-Length: {10 * LIMIT}\r\n\r\n".encode())
        for _ in range(9):
            protocol.data_received(b"x" * LIMIT)
        assert protocol.cycle.oversized and protocol.cycle.parts == []
        protocol.connection_lost(None)
        protocol, transport = HttpProtocol(config=config, server_state=ServerState(), app_state={}), Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(request(body, headers))
        for _ in range(500):
            if b"\r\n\r\n" in transport.written:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        await app.state.manager.stop()
        return seen, bytes(transport.written)

    seen, written = asyncio.run(scenario())
    assert seen == [], "the app was called for an inference request"
    head, _, answer = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(head.lower().split(b"inference-header-content-length: ")[1].split(b"\r\n")[0])
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", x)
    np.testing.assert_array_equal(np.frombuffer(answer[length:], np.float32).reshape(expected.shape), expected)


def test_a_lone_request_is_answered_within_the_step_that_read_it(model_repo: Path, digits_val: Any) -> None:
    """With the server holding one client, a request whose batch runs on the loop is answered before
    data_received returns: no Task and no later turn of the loop (service.eager). With other clients it waits
    for its batch in a Task, and is answered as well."""
    x = np.asarray(digits_val[0][:1], np.float32)
    body, headers = binary_request(x, parameters={"binary_data_output": True})

    async def scenario() -> list[tuple[bool, int, bool]]:
        app, protocol, transport = await in_process(model_repo)
        alone = [True]
        app.state.manager.sole_client = lambda: alone[0]
        seen = []
        for lone in (True, True, False):  # the first run's time is unknown: it runs in the thread
            alone[0] = lone
            transport.written.clear()
            protocol.data_received(request(body, headers))
            seen.append((b"\r\n\r\n" in transport.written, len(protocol.tasks), lone))
            assert (await answered(transport)).startswith(b"HTTP/1.1 200 OK")
        await app.state.manager.stop()
        return seen

    first, lone, crowded = asyncio.run(scenario())
    assert first == (False, 1, True)
    assert lone == (True, 0, True)
    assert crowded == (False, 1, False)


def test_an_answer_carries_the_default_headers_uvicorn_holds_now(model_repo: Path, digits_val: Any) -> None:
    """uvicorn puts a new list of default headers (date, server) in place when the date changes; the protocol
    keeps them as bytes between those changes, and each answer carries the list in place when it is written."""
    x = np.asarray(digits_val[0][:1], np.float32)
    body, headers = binary_request(x, parameters={"binary_data_output": True})

    async def scenario() -> list[bytes]:
        state = ServerState()
        app, protocol, transport = await in_process(model_repo, state)
        heads = []
        for date in (b"Fri, 04 Dec 2026 22:00:00 GMT", b"Fri, 04 Dec 2026 22:00:01 GMT"):
            state.default_headers = [(b"date", date), (b"server", b"uvicorn")]
            transport.written.clear()
            protocol.data_received(request(body, headers))
            heads.append((await answered(transport)).partition(b"\r\n\r\n")[0])
        await app.state.manager.stop()
        return heads

    first, second = asyncio.run(scenario())
    assert first.startswith(b"HTTP/1.1 200 OK\r\ndate: Fri, 04 Dec 2026 22:00:00 GMT\r\nserver: uvicorn\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK\r\ndate: Fri, 04 Dec 2026 22:00:01 GMT\r\nserver: uvicorn\r\n")


def test_each_request_says_how_soon_after_its_connections_previous_answer_it_came(
    model_repo: Path, digits_val: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batcher waits only for clients that come back at once (service.batching): from the third request on
    a connection, the protocol tells the pipeline the slower of the connection's last two returns (the
    seconds from an answer being written to the next request)."""
    import service.http_infer

    x = np.asarray(digits_val[0][:1], np.float32)
    body, headers = binary_request(x, parameters={"binary_data_output": True})
    seen: list[float | None] = []
    inner = service.http_infer.infer_http

    async def recording(*args: Any) -> Any:
        seen.append(args[-1])
        return await inner(*args)

    monkeypatch.setattr(service.http_infer, "infer_http", recording)

    async def scenario() -> None:
        app, protocol, transport = await in_process(model_repo)
        for pause in (0.0, 0.05, 0.0):
            await asyncio.sleep(pause)
            transport.written.clear()
            protocol.data_received(request(body, headers))
            assert (await answered(transport)).startswith(b"HTTP/1.1 200 OK")
        await app.state.manager.stop()

    asyncio.run(scenario())
    first, second, third = seen
    assert first is None and second is None, "one return is not yet a client that comes back at once"
    assert third is not None and 0.04 <= third < 5, f"{third}: not the slower of the last two returns"


def test_what_follows_an_answer_that_closed_the_connection_in_the_same_read_is_not_served(
    model_repo: Path, digits_val: Any
) -> None:
    """A request answered at once with ``Connection: close`` (here: the server drains) closes the connection
    while the rest of the same read is still to be parsed: a pipelined inference or any other request behind
    it is not run (RFC 9112 section 9.6), and nothing more is written."""
    x = np.asarray(digits_val[0][:1], np.float32)
    body, headers = binary_request(x, parameters={"binary_data_output": True})
    unload = b"POST /v2/repository/models/digits/unload HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"

    async def scenario() -> tuple[bytes, float, bool]:
        app = create_app(Settings(repository=model_repo))
        manager = app.state.manager
        await manager.load_all()
        manager.sole_client = lambda: True
        config = uvicorn.Config(front(app), interface="asgi3", proxy_headers=False, lifespan="off", log_level="warning")
        config.load()

        def connection() -> tuple[HttpProtocol, Transport]:
            protocol, transport = HttpProtocol(config=config, server_state=ServerState(), app_state={}), Transport()
            protocol.connection_made(transport)  # type: ignore[arg-type]
            return protocol, transport

        warm, written = connection()  # the first run's time is unknown: it runs in the thread
        warm.data_received(request(body, headers))
        for _ in range(500):
            if b"\r\n\r\n" in written.written:
                break
            await asyncio.sleep(0.01)
        before = app.state.metrics.registry.get_sample_value(
            "bnfold_requests_total", {"model": "digits", "version": "1", "outcome": "success"}
        )
        manager.draining = True  # answers say "connection: close" and close
        protocol, transport = connection()
        protocol.data_received(request(body, headers) + request(body, headers) + unload)
        await asyncio.sleep(0.2)
        after = app.state.metrics.registry.get_sample_value(
            "bnfold_requests_total", {"model": "digits", "version": "1", "outcome": "success"}
        )
        still_loaded = "digits" in manager.models
        await manager.stop()
        return bytes(transport.written), after - before, still_loaded and transport.closing

    written, answered, closed_and_loaded = asyncio.run(scenario())
    assert written.count(b"HTTP/1.1 ") == 1 and b"connection: close" in written
    assert answered == 1
    assert closed_and_loaded


def test_a_request_pipelined_behind_an_answer_in_the_same_read_is_not_timed_out_as_idle(
    model_repo: Path, digits_val: Any
) -> None:
    """The first answer arms the keep-alive timer while the rest of the read is parsed; the next request in
    that read disarms it while it runs (else a request waiting longer than the keep-alive timeout would have
    its connection closed under it)."""
    x = np.asarray(digits_val[0][:1], np.float32)
    body, headers = binary_request(x, parameters={"binary_data_output": True})

    async def scenario() -> tuple[bool, bool, int]:
        app = create_app(Settings(repository=model_repo))
        manager = app.state.manager
        await manager.load_all()
        lone = iter([True])  # asked for the first pipelined request (the warm-up runs in the thread: its run's
        # time is unknown), then another client has come
        manager.sole_client = lambda: next(lone, False)
        config = uvicorn.Config(front(app), interface="asgi3", proxy_headers=False, lifespan="off", log_level="warning")
        config.load()
        protocol, transport = HttpProtocol(config=config, server_state=ServerState(), app_state={}), Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(request(body, headers))  # warm-up: its run's time becomes known
        for _ in range(500):
            if b"\r\n\r\n" in transport.written:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        transport.written.clear()
        protocol.data_received(request(body, headers) + request(body, headers))
        first_answered = transport.written.count(b"HTTP/1.1 200") == 1
        second_waits_untimed = len(protocol.tasks) == 1 and protocol.timeout_keep_alive_task is None
        for _ in range(500):
            if transport.written.count(b"HTTP/1.1 200") == 2:
                break
            await asyncio.sleep(0.01)
        await manager.stop()
        return first_answered, second_waits_untimed, transport.written.count(b"HTTP/1.1 200")

    first_answered, second_waits_untimed, answers = asyncio.run(scenario())
    assert first_answered and second_waits_untimed and answers == 2


def test_a_failure_past_the_error_policy_is_logged_and_closes_the_connection(
    model_repo: Path, digits_val: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception the error policy did not turn into an answer (a bug in the protocol's own code) is logged
    with its traceback and the connection closed, not turned into the parser's "400 Invalid HTTP request"."""
    x = np.asarray(digits_val[0][:1], np.float32)
    body, headers = binary_request(x)

    async def broken(self: HttpProtocol, exchange: Any) -> None:
        raise RuntimeError("a bug in the answer")

    monkeypatch.setattr(HttpProtocol, "_answer", broken)

    async def scenario() -> Transport:
        app = create_app(Settings(repository=model_repo))
        config = uvicorn.Config(front(app), interface="asgi3", proxy_headers=False, lifespan="off", log_level="warning")
        config.load()
        protocol, transport = HttpProtocol(config=config, server_state=ServerState(), app_state={}), Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(request(body, headers))
        return transport

    transport = asyncio.run(scenario())
    assert transport.closing and b"400" not in transport.written
    assert "a bug in the answer" in caplog.text and "answering an inference request failed" in caplog.text
