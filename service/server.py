"""Running the app under uvicorn with a graceful drain on SIGTERM/SIGINT, and a forced stop on the second.

First signal: readiness turns false at once and responses carry ``Connection: close`` (see
:mod:`service.draining`), so keep-alive clients stop reusing their connections. ``drain_delay_s`` later the
server stops accepting, lets the event loop read what idle connections have already received, closes the
connections that are still idle, answers every request it received (waiting up to ``graceful_timeout_s``),
stops the batchers, and the process exits 0. A second SIGTERM or SIGINT stops at once: queued requests get
503 and the process exits 1 without waiting.

With ``BNFOLD_GRPC_PORT`` set, the gRPC server (``service.grpc``) starts once the models are loaded and drains
alongside the HTTP connections, both before the lifespan shutdown stops the batchers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import uvicorn

from service.app import create_app
from service.settings import Settings

if TYPE_CHECKING:
    from service.grpc.server import GrpcServer

logger = logging.getLogger(__name__)
LAST_READS_S = 0.05  # after the listeners close: time for bytes already received to be read as requests


class DrainingServer(uvicorn.Server):
    """uvicorn with bnfold's two-step shutdown (see the module docstring)."""

    def __init__(
        self, config: uvicorn.Config, manager: Any, drain_delay_s: float = 0.0, grpc: GrpcServer | None = None
    ) -> None:
        super().__init__(config)
        self.manager = manager
        self.drain_delay_s = drain_delay_s
        self.drain_until: float | None = None  # monotonic time at which the drain starts
        self.forced = False
        self.grpc = grpc
        self.grpc_failed = False

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.grpc is not None and not self.should_exit:
            try:
                await self.grpc.start()
            except RuntimeError as exc:
                logger.error("%s", exc)
                self.grpc_failed = self.should_exit = True

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
        for server in self.servers:  # stop accepting, then read what idle connections already received
            server.close()
        if not self.force_exit:
            await asyncio.sleep(LAST_READS_S)
        await super().shutdown(sockets)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        with self.capture_signals():
            await self._serve(sockets)
            self._captured_signals.clear()  # handled: uvicorn would re-raise them and the exit status be -15


def serve(settings: Settings) -> int:
    """Serve until a signal; returns the exit code (0 after a drain, 1 when forced, 3 when it could not start)."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        lifespan="on",
    )
    grpc = None
    if settings.grpc_port:
        from service.grpc.server import GrpcServer  # tritonclient's stubs load only when gRPC is on

        grpc = GrpcServer(app.state.manager, settings)
    server = DrainingServer(config, app.state.manager, settings.drain_delay_s, grpc)
    server.run()
    if not server.started or server.grpc_failed:
        logger.error("the server did not start (see the error above)")
        return 3
    return 1 if server.forced else 0
