"""The listening-socket filter that lets a drain close its listeners without resetting a connection."""

from __future__ import annotations

import socket
import sys

import pytest

from service.listeners import duplicates, refuse_new

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="socket filters are Linux's")


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_a_filtered_listener_completes_no_new_connection_but_keeps_the_queued_one() -> None:
    listener = _listener()
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=2)  # completed before the filter
    try:
        assert refuse_new(listener)
        with pytest.raises(TimeoutError):  # its SYN is dropped: no handshake, nothing queued
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
        listener.setblocking(False)
        conn, _ = listener.accept()  # the one queued before still reads and writes
        queued.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert queued.recv(4) == b"pong"
        conn.close()
        with pytest.raises(BlockingIOError):  # and nothing else was queued
            listener.accept()
    finally:
        queued.close()
        listener.close()
    with pytest.raises(ConnectionRefusedError):  # closed, the port refuses
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_duplicates_keep_the_listener_and_its_queue_open_after_the_original_closes() -> None:
    listener = _listener()
    port = listener.getsockname()[1]
    [dup] = duplicates([listener])
    listener.close()
    client = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        conn, _ = dup.accept()
        conn.close()
    finally:
        client.close()
        dup.close()
