"""One write per response (service.http_protocol): the transport wrapper, and the real server on the wire; the
body an inference exchange keeps."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from typing import Any

import pytest

from service.errors import ApiError
from service.http_protocol import CoalescingTransport, Exchange
from tests.service.conftest import ServerProcess


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")

    def write_eof(self) -> None:
        self.events.append("eof")

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str) -> Any:
        return f"info {name}"


async def _step() -> None:
    await asyncio.sleep(0)


def test_writes_in_one_step_leave_as_one_write_in_order() -> None:
    async def main() -> None:
        real = FakeTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"body")
        assert real.writes == []  # held until the end of this step
        assert t.get_write_buffer_size() == 7 + len(b"HTTP/1.1 200 OK\r\n\r\n") + 4
        await _step()
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        t.write(b"next")
        await _step()
        assert real.writes[1:] == [b"next"]
        assert t.get_extra_info("peername") == "info peername"  # everything else is the real transport's

    asyncio.run(main())


def test_close_and_eof_write_what_is_held_first_abort_drops_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = FakeTransport()
        t = CoalescingTransport(real, loop)  # type: ignore[arg-type]
        t.write(b"last")
        t.write_eof()
        assert (real.writes, real.events) == ([b"last"], ["eof"])
        t.write(b"bye")
        t.close()
        assert (real.writes, real.events) == ([b"last", b"bye"], ["eof", "close"])
        await _step()  # the scheduled flush finds nothing held: no write after the close
        assert real.writes == [b"last", b"bye"]

        aborted = FakeTransport()
        t = CoalescingTransport(aborted, loop)  # type: ignore[arg-type]
        t.write(b"dropped")
        t.abort()
        await _step()
        assert (aborted.writes, aborted.events) == ([], ["abort"])

    asyncio.run(main())


def test_write_now_writes_what_is_held_then_its_data_before_the_step_ends() -> None:
    async def main() -> None:
        real = FakeTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"earlier ")
        t.write_now(b"answer")
        assert real.writes == [b"earlier ", b"answer"]  # in order, and now: not at the end of the step
        await _step()
        assert real.writes == [b"earlier ", b"answer"]  # nothing left to write twice
        real.closing = True
        t.write_now(b"too late")
        assert real.writes == [b"earlier ", b"answer"]

    asyncio.run(main())


def test_nothing_is_written_to_a_transport_already_closing() -> None:
    async def main() -> None:
        real = FakeTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"too late")
        real.closing = True  # the peer went away meanwhile
        await _step()
        assert real.writes == []

    asyncio.run(main())


TCPI_DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in Linux's struct tcp_info (since Linux 4.6)


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < TCPI_DATA_SEGS_IN + 4:
        pytest.skip("this kernel's tcp_info has no tcpi_data_segs_in")
    return int(struct.unpack_from("I", info, TCPI_DATA_SEGS_IN)[0])


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_an_exchange_keeps_its_body_as_it_came_and_drops_it_past_the_limit() -> None:
    """A body the parser handed over in one piece is the body read (no copy: a 600 KB tensor was copied twice,
    16 us of a request's CPU); pieces are joined once; past the limit nothing is kept and reading is a 413."""
    one = Exchange(True, "m", None, [])
    piece = b"x" * 1000
    one.add(piece, 4096)
    assert asyncio.run(one.read({}, 4096)) is piece
    several = Exchange(True, "m", None, [])
    for part in (b"ab", b"cd", b"e"):
        several.add(part, 4096)
    assert asyncio.run(several.read({}, 4096)) == b"abcde"
    over = Exchange(True, "m", None, [])
    for _ in range(3):
        over.add(piece, 2500)
    assert over.oversized and over.parts == []
    with pytest.raises(ApiError) as info:
        asyncio.run(over.read({}, 2500))
    assert info.value.status == 413


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO's segment counts are Linux's")
def test_each_response_reaches_the_client_in_one_tcp_segment(server: ServerProcess) -> None:
    """uvicorn alone writes a response's head and body separately: two segments on the wire per response."""
    requests = 20
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        before = data_segments_in(sock)
        for _ in range(requests):
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert data_segments_in(sock) - before == requests
