"""Running the app under uvicorn with a graceful drain on SIGTERM/SIGINT, and a forced stop on the second.

First signal: readiness turns false at once and responses carry ``Connection: close`` (see
:mod:`service.draining`), so keep-alive clients stop reusing their connections. ``drain_delay_s`` later the
server stops accepting, lets the event loop read what idle connections have already received, closes the
connections that are still idle, answers every request it received (waiting up to ``graceful_timeout_s``),
stops the batchers, and the process exits 0. A second SIGTERM or SIGINT stops at once: queued requests get
503 and the process exits 1 without waiting.

With ``BNFOLD_GRPC_PORT`` set, the gRPC server (``service.grpc``) starts once the models are loaded and drains
alongside the HTTP connections, both before the lifespan shutdown stops the batchers.

No request that reached the server is lost in the drain: from the moment it stops accepting, new connection
attempts are dropped (and refused once the listeners close, see :mod:`service.listeners`); connections the
kernel completed before that are accepted and served (otherwise the close would reset them); a connection
accepted but still without its first request (typically a client that got ``Connection: close`` and reconnected at
once, its request not yet read on a loaded machine) is given up to ``FRESH_CONNECTION_GRACE_S`` for that
request, which is answered with ``Connection: close``, instead of being closed as idle.

With tracing off, inference requests take the short way: bnfold's HTTP protocol answers them itself
(:mod:`service.http_protocol`), and what reaches ASGI goes through :class:`~service.routes.infer.InferenceFront`
(see :func:`front`); with tracing on, every request runs through the app and its tracing middleware.

As a worker of a supervised server (``cluster``, see :mod:`service.workers`) it serves on the sockets the
supervisor bound, accepts its share of the connections (:mod:`service.workers.accepting`), reports its
readiness to the other workers, and takes model control from the supervisor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.app import create_app
from service.http_protocol import HttpProtocol
from service.listeners import duplicates, refuse_new
from service.routes.infer import InferenceFront
from service.settings import Settings
from service.workers.accepting import BalancedAcceptor, CountedConnections

if TYPE_CHECKING:
    from uvicorn.server import ServerState

    from service.grpc.server import GrpcServer
    from service.manager import ModelManager
    from service.workers.cluster import Cluster

logger = logging.getLogger(__name__)
LAST_READS_S = 0.05  # after accepting stops: for handshakes under way to complete and received bytes to be read
FRESH_CONNECTION_GRACE_S = 2.0  # after that: longest wait for the first request of a just-accepted connection


class DrainingServer(uvicorn.Server):
    """uvicorn with bnfold's two-step shutdown (see the module docstring)."""

    def __init__(
        self,
        config: uvicorn.Config,
        manager: Any,
        drain_delay_s: float = 0.0,
        grpc: GrpcServer | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        super().__init__(config)
        self.manager = manager
        self.drain_delay_s = drain_delay_s
        self.drain_until: float | None = None  # monotonic time at which the drain starts
        self.forced = False
        self.grpc = grpc
        self.grpc_failed = False
        self.cluster = cluster
        self.acceptor: BalancedAcceptor | None = None  # a worker's accepting (service.workers.accepting)
        if cluster is not None:
            self.server_state.connections = CountedConnections(self._connections_changed)

    def _connections_changed(self, open_connections: int) -> None:
        if self.acceptor is not None:
            self.acceptor.connections_changed(open_connections)

    async def startup(self, sockets: Any = None) -> None:
        balanced = self.cluster is not None and bool(sockets)  # a worker accepts its share itself
        await super().startup([] if balanced else sockets)
        if balanced and self.started and not self.should_exit:
            self.acceptor = self._balanced_acceptor(sockets[0])
            self.acceptor.start()
        if self.grpc is not None and not self.should_exit:
            try:
                await self.grpc.start()
            except RuntimeError as exc:
                logger.error("%s", exc)
                self.grpc_failed = self.should_exit = True
        if self.cluster is not None and self.started and not self.should_exit:
            self.cluster.mark_ready(True)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.manager.draining:  # the second signal (or one during shutdown): stop now
            logger.warning("signal %d again: stopping at once", sig)
            self.forced = self.force_exit = self.should_exit = True
            asyncio.get_running_loop().call_soon_threadsafe(self.manager.abort)  # on the loop, not in the handler
            return
        logger.info(
            "signal %d: readiness off; draining in %.1f s, then answering what was received", sig, self.drain_delay_s
        )
        self.manager.draining = True
        if self.cluster is not None:
            self.cluster.mark_ready(False)
        self.drain_until = time.monotonic() + self.drain_delay_s

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc is not None:  # uvicorn waits for its server_state tasks before the lifespan shutdown
            task = asyncio.get_running_loop().create_task(self.grpc.stop())
            self.server_state.tasks.add(task)
            task.add_done_callback(self.server_state.tasks.discard)
        listening = [sock for server in self.servers for sock in server.sockets or ()]
        if self.acceptor is not None:
            self.acceptor.stop()
            listening.append(self.acceptor.sock)
        listeners = duplicates(listening)
        if self.manager.draining:  # the whole server stops accepting: new connection attempts are refused
            for listener in listeners:
                refuse_new(listener)
        for server in self.servers:  # stop accepting; the duplicates keep what the kernel queued
            server.close()
        if not self.force_exit:
            await asyncio.sleep(LAST_READS_S)  # handshakes under way complete, idle connections read what came
            await self._accept_queued(listeners)
            await self._wait_first_requests()
        for listener in listeners:
            listener.close()
        await super().shutdown(sockets)

    async def _accept_queued(self, listeners: list[socket.socket]) -> None:
        """Accept every connection the kernel completed before the close (the last process to close a
        listening socket would otherwise reset them) and serve it like any other, then close the listeners."""
        loop = asyncio.get_running_loop()
        protocol = self._protocol_factory()
        for listener in listeners:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:  # BlockingIOError: none queued
                    break
                conn.setblocking(False)
                await loop.connect_accepted_socket(protocol, conn)
            listener.close()

    def _protocol_factory(self) -> Any:
        """What uvicorn's server makes a connection's protocol with."""
        config = self.config
        return functools.partial(
            config.http_protocol_class,
            config=config,
            server_state=self.server_state,
            app_state=self.lifespan.state,  # type: ignore[call-arg]
        )

    def _balanced_acceptor(self, sock: socket.socket) -> BalancedAcceptor:
        assert self.cluster is not None
        shared = self.cluster.shared
        return BalancedAcceptor(sock, self._protocol_factory(), self.cluster.slot, shared.connections, shared.ready)

    async def _wait_first_requests(self) -> None:
        """Until every accepted connection has its first request (or ``FRESH_CONNECTION_GRACE_S``): uvicorn
        would close one still without a request as idle, and its client's request would be lost."""
        deadline = time.monotonic() + FRESH_CONNECTION_GRACE_S
        while time.monotonic() < deadline and not self.force_exit:
            fresh = [c for c in self.server_state.connections if getattr(c, "cycle", True) is None]
            if not fresh:
                return
            await asyncio.sleep(0.005)
        logger.debug("closing connections that sent no request within %.1f s", FRESH_CONNECTION_GRACE_S)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        with self.capture_signals():
            await self._serve(sockets)
            self._captured_signals.clear()  # handled: uvicorn would re-raise them and the exit status be -15


def front(app: Any) -> InferenceFront:
    """``app`` behind :class:`~service.routes.infer.InferenceFront` (inference straight to its handler), the rest
    behind uvicorn's proxy-headers middleware as uvicorn itself would add it (trusting FORWARDED_ALLOW_IPS, by
    default the loopback addresses). With tracing on, the app runs as it is, every request in its span."""
    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
    fallback: Any = ProxyHeadersMiddleware(app, trusted_hosts=trusted)  # uvicorn's own scope types
    return InferenceFront(fallback, app.state.manager)


def sole_client(state: ServerState, manager: ModelManager, cluster: Cluster | None) -> bool:
    """Whether the server holds at most one client: HTTP connections (``state``) and gRPC inferences running
    (``manager.grpc_calls``) together, and with several workers every worker's (the counts they publish,
    :mod:`service.workers.accepting`, :meth:`ModelManager.grpc_call`)."""
    return len(state.connections) + manager.grpc_calls <= 1 and (cluster is None or cluster.clients() <= 1)


def serve(settings: Settings, sockets: list[socket.socket] | None = None, cluster: Cluster | None = None) -> int:
    """Serve until a signal; returns the exit code (0 after a drain, 1 when forced, 3 when it could not start).

    ``sockets`` and ``cluster``: as one worker of a supervised server (:mod:`service.workers.worker`)."""
    app = create_app(settings)
    app.state.manager.cluster = cluster
    config = uvicorn.Config(
        app if settings.tracing else front(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=HttpProtocol,  # one write per response, inference answered in the protocol (service.http_protocol)
        log_config=None if cluster is not None else LOGGING_CONFIG,  # workers: the tagged format
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        lifespan="on",
        interface="asgi3",  # the front's __call__ is a plain function (uvicorn's "auto" would take it for ASGI 2)
        proxy_headers=settings.tracing,  # with the front, the fallback app has uvicorn's proxy-headers middleware
    )
    grpc = None
    if settings.grpc_port:
        from service.grpc.server import GrpcServer  # tritonclient's stubs load only when gRPC is on

        grpc = GrpcServer(app.state.manager, settings, shared_port=cluster is not None)
    server = DrainingServer(config, app.state.manager, settings.drain_delay_s, grpc, cluster)
    # a lone client's batches run on the event loop (service.batching)
    app.state.manager.sole_client = functools.partial(sole_client, server.server_state, app.state.manager, cluster)
    server.run(sockets)
    if not server.started or server.grpc_failed:
        logger.error("the server did not start (see the error above)")
        return 3
    return 1 if server.forced else 0
