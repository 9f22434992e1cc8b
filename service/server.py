"""Running the app under uvicorn (and gRPC beside it when ``BNFOLD_GRPC_PORT`` is set) with a graceful drain on
SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import uvicorn

from service.app import create_app
from service.settings import Settings

if TYPE_CHECKING:
    from service.grpc.server import GrpcServer

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """On the first exit signal readiness turns false at once; ``drain_delay_s`` later uvicorn stops
    accepting, closes idle connections and waits for in-flight requests. The delay lets load balancers see
    the readiness change, and lets connections already open deliver the requests they have sent (closing
    them sooner would drop a request the client had already written). A second signal stops at once.
    The gRPC server (if any) starts once the models are loaded and drains alongside HTTP connections, both
    before the lifespan shutdown stops the batchers.
    """

    def __init__(
        self, config: uvicorn.Config, manager: Any, drain_delay_s: float = 0.0, grpc: GrpcServer | None = None
    ) -> None:
        super().__init__(config)
        self.manager = manager
        self.drain_delay_s = drain_delay_s
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

    async def shutdown(self, sockets: Any = None) -> None:
        if self.grpc is not None:  # uvicorn waits for its server_state tasks before the lifespan shutdown
            task = asyncio.get_running_loop().create_task(self.grpc.stop())
            self.server_state.tasks.add(task)
            task.add_done_callback(self.server_state.tasks.discard)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.manager.draining or self.drain_delay_s <= 0:
            self.manager.draining = True
            super().handle_exit(sig, frame)
            return
        logger.info(
            "signal %d: readiness off; draining in %.1f s, then finishing in-flight requests", sig, self.drain_delay_s
        )
        self.manager.draining = True
        asyncio.get_running_loop().call_later(self.drain_delay_s, super().handle_exit, sig, frame)


def serve(settings: Settings) -> int:
    """Serve until a signal; returns the exit code (3 when the app could not start)."""
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
    return 0
