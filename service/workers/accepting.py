"""Accepting connections on the workers' shared listening socket so that each worker holds its share.

Every worker's event loop watches the one listening socket the supervisor bound. Left to uvloop, the worker
whose loop wakes first accepts every connection queued at that moment: a client that opens its 16
keep-alive connections at once often finds all 16 on one worker (measured: 16/0 in 2 of 5 rounds, 14/2 in
another), and that worker's one ONNX Runtime thread then serves at half the machine's pace while the other
worker idles (1,050-1,220 samples/s against 2,100-2,190 for an even split; benchmarks/RESULTS.md).

:class:`BalancedAcceptor` accepts instead of uvloop's server. Each worker publishes how many connections it
holds in shared memory (one integer per worker slot, :class:`~service.workers.cluster.Shared`); a worker that
holds more than the fewest held by any ready worker lets a pending connection wait for that worker, for at
most ``MAX_DEFER_S``, and takes it itself after that (a busy or stuck worker never holds a client back for
longer). Ties accept at once, and whoever calls ``accept`` first wins, as before. Connections are balanced
as they open; a connection stays where it was accepted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

DEFER_S = 0.001  # a worker with more than its share looks again this much later
MAX_DEFER_S = 0.02  # the longest a pending connection waits for a worker with fewer connections
ACCEPT_RETRY_S = 1.0  # after an accept failed for want of descriptors or memory


class CountedConnections(set[Any]):
    """uvicorn's set of a server's open connections (``ServerState.connections``) that calls ``changed``
    with its new size whenever a connection is added or removed."""

    def __init__(self, changed: Callable[[int], None]) -> None:
        super().__init__()
        self._changed = changed

    def add(self, connection: Any) -> None:
        super().add(connection)
        self._changed(len(self))

    def discard(self, connection: Any) -> None:
        super().discard(connection)
        self._changed(len(self))


class BalancedAcceptor:
    """Accepts connections on ``sock`` for worker ``slot`` while it holds no more than its share (see the
    module docstring); each accepted connection is served by ``protocol_factory`` as uvloop's server would.

    ``counts`` and ``ready``: the shared per-slot connection counts and readiness flags."""

    def __init__(
        self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol], slot: int, counts: Any, ready: Any
    ) -> None:
        self.sock = sock
        self._factory = protocol_factory
        self._slot = slot
        self._counts = counts
        self._ready = ready
        self._opening = 0  # accepted, its transport not made yet
        self._open = 0  # connections of this worker's server
        self._deferred_since: float | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._publish()
        self._loop.add_reader(self.sock.fileno(), self._acceptable)

    def stop(self) -> None:
        """Stop accepting (the socket stays open: what is queued on it stays queued)."""
        if self._loop is None:
            return
        self._loop.remove_reader(self.sock.fileno())
        if self._resume is not None:
            self._resume.cancel()
        self._loop = None

    def connections_changed(self, open_connections: int) -> None:
        """The worker's server now holds ``open_connections`` (a :class:`CountedConnections` callback)."""
        self._open = open_connections
        self._publish()

    def _publish(self) -> None:
        self._counts[self._slot] = self._open + self._opening

    def _share_taken(self) -> bool:
        """Another ready worker holds fewer connections than this one."""
        mine = self._counts[self._slot]
        return any(
            self._ready[slot] and self._counts[slot] < mine for slot in range(len(self._counts)) if slot != self._slot
        )

    def _acceptable(self) -> None:
        """The listening socket is readable: accept while this worker may (see the module docstring)."""
        loop = self._loop
        if loop is None:
            return
        while True:
            if self._share_taken():
                now = time.monotonic()
                if self._deferred_since is None:
                    self._deferred_since = now
                if now - self._deferred_since < MAX_DEFER_S:  # let the other worker take it
                    loop.remove_reader(self.sock.fileno())
                    self._resume = loop.call_later(DEFER_S, self._look_again)
                    return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):  # nothing queued (another worker took it)
                self._deferred_since = None
                return
            except ConnectionAbortedError:  # the client gave up while it was queued
                continue
            except OSError as exc:  # out of descriptors or memory: pause, as asyncio's own servers do
                logger.error("accepting a connection failed (%s); trying again in %g s", exc, ACCEPT_RETRY_S)
                loop.remove_reader(self.sock.fileno())
                self._resume = loop.call_later(ACCEPT_RETRY_S, self._look_again)
                return
            self._deferred_since = None
            self._opening += 1
            self._publish()
            task = loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _look_again(self) -> None:
        self._resume = None
        if self._loop is not None:
            self._loop.add_reader(self.sock.fileno(), self._acceptable)
            self._acceptable()

    async def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            await asyncio.get_running_loop().connect_accepted_socket(self._factory, conn)
        except OSError as exc:
            logger.debug("a connection closed before it was served: %s", exc)
            conn.close()
        finally:
            self._opening -= 1
            self._publish()
