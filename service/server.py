"""Running the app under uvicorn with a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn

from service.app import create_app
from service.settings import Settings

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """On the first exit signal readiness turns false at once; ``drain_delay_s`` later uvicorn stops
    accepting, closes idle connections and waits for in-flight requests. The delay lets load balancers see
    the readiness change, and lets connections already open deliver the requests they have sent (closing
    them sooner would drop a request the client had already written). A second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, manager: Any, drain_delay_s: float = 0.0) -> None:
        super().__init__(config)
        self.manager = manager
        self.drain_delay_s = drain_delay_s

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
    server = DrainingServer(config, app.state.manager, settings.drain_delay_s)
    server.run()
    if not server.started:
        logger.error("the server did not start (see the error above)")
        return 3
    return 0
