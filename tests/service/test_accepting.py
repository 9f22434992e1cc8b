"""Workers accepting their share of connections (service/workers/accepting.py), two acceptors in one loop."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import uvloop

from service.workers.accepting import MAX_DEFER_S, BalancedAcceptor, CountedConnections

# libuv's timers count whole milliseconds from the loop's cached clock, read at the start of its turn: a wait of
# d seconds can end up to a millisecond sooner than d after a time.monotonic() read just before it was set
TIMER_GRAIN_S = 0.001


class _Worker:
    """One worker's side: an acceptor on its own descriptor of the shared listening socket, and the set of
    its open connections as uvicorn keeps it."""

    def __init__(self, listener: socket.socket, slot: int, counts: list[int], ready: list[int]) -> None:
        self.connections: set[Any] = set()
        self.made: list[float] = []
        worker = self

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                worker.made.append(time.monotonic())
                worker.counted.add(self)

            def connection_lost(self, exc: Exception | None) -> None:
                worker.counted.discard(self)

        self.acceptor = BalancedAcceptor(listener.dup(), Protocol, slot, counts, ready)
        self.counted = CountedConnections(self.acceptor.connections_changed)


def _run(main: Coroutine[Any, Any, None]) -> None:
    uvloop.run(main)  # the server's loop


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


async def _connect(port: int, n: int) -> list[socket.socket]:
    clients = []
    for _ in range(n):
        client = socket.socket()
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
        clients.append(client)
    return clients


async def _settle(workers: list[_Worker], total: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(w.counted) for w in workers) < total:
        assert time.monotonic() < deadline, [len(w.counted) for w in workers]
        await asyncio.sleep(0.005)


def test_two_workers_on_one_socket_each_take_half_of_a_burst() -> None:
    async def main() -> None:
        listener = _listener()
        counts, ready = [0, 0], [1, 1]
        workers = [_Worker(listener, slot, counts, ready) for slot in (0, 1)]
        for w in workers:
            w.acceptor.start()
        clients = await _connect(listener.getsockname()[1], 16)  # all at once, before either loop turn
        await _settle(workers, 16)
        assert [len(w.counted) for w in workers] == [8, 8]
        assert counts == [8, 8]  # what each published
        for client in clients[:6]:
            client.close()
        await asyncio.sleep(0.05)
        assert sum(counts) == 10  # closes are published too
        for w in workers:
            w.acceptor.stop()
        for client in clients[6:]:
            client.close()
        listener.close()

    _run(main())


def test_a_worker_takes_a_connection_its_emptier_peer_leaves_after_the_longest_wait() -> None:
    async def main() -> None:
        listener = _listener()
        counts, ready = [0, 0], [1, 1]
        busy = _Worker(listener, 0, counts, ready)  # slot 1 is ready, holds none, and never accepts: stuck
        busy.acceptor._open = 3
        busy.acceptor.start()
        asked = time.monotonic()
        clients = await _connect(listener.getsockname()[1], 1)
        await _settle([busy], 1)
        waited = busy.made[0] - asked
        assert MAX_DEFER_S - TIMER_GRAIN_S <= waited < 1.0, waited  # it left it to the peer, then took it
        busy.acceptor.stop()
        clients[0].close()
        listener.close()

    _run(main())


def test_a_peer_that_is_not_ready_is_not_waited_for() -> None:
    async def main() -> None:
        listener = _listener()
        counts, ready = [3, 0], [1, 0]  # slot 1 dead or starting: its count means nothing
        alone = _Worker(listener, 0, counts, ready)
        alone.acceptor._open = 3
        alone.acceptor.start()
        asked = time.monotonic()
        clients = await _connect(listener.getsockname()[1], 1)
        await _settle([alone], 1)
        assert alone.made[0] - asked < MAX_DEFER_S
        alone.acceptor.stop()
        clients[0].close()
        listener.close()

    _run(main())


def test_the_readme_states_the_longest_wait() -> None:
    readme = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    stated = re.search(r"leaves a new one to it \(for at most (\d+) ms\)", readme)
    assert stated is not None and int(stated.group(1)) == round(MAX_DEFER_S * 1000)


def test_out_of_descriptors_pauses_accepting_instead_of_spinning(monkeypatch: Any) -> None:
    import errno

    from service.workers import accepting

    monkeypatch.setattr(accepting, "ACCEPT_RETRY_S", 0.2)

    class Flaky:
        """The listening socket, but the first accept fails as it does at the descriptor limit."""

        def __init__(self, sock: socket.socket) -> None:
            self.sock, self.calls = sock, 0

        def accept(self) -> tuple[socket.socket, Any]:
            self.calls += 1
            if self.calls == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            return self.sock.accept()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.sock, name)

    async def main() -> None:
        listener = _listener()
        worker = _Worker(listener, 0, [0], [1])
        flaky = Flaky(worker.acceptor.sock)
        worker.acceptor.sock = flaky  # type: ignore[assignment]
        worker.acceptor.start()
        asked = time.monotonic()
        clients = await _connect(listener.getsockname()[1], 1)
        await asyncio.sleep(0.1)
        assert flaky.calls == 1 and not worker.counted  # paused: no second try yet, no busy loop
        await _settle([worker], 1)
        assert worker.made[0] - asked >= 0.2 - TIMER_GRAIN_S  # the pause, not a busy retry
        worker.acceptor.stop()
        clients[0].close()
        listener.close()

    _run(main())
