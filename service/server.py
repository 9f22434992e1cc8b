"""Running the app under uvicorn with a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from service.app import create_app
from service.settings import Settings

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """On the first exit signal, readiness turns false before uvicorn stops accepting and drains."""

    def __init__(self, config: uvicorn.Config, manager: Any) -> None:
        super().__init__(config)
        self.manager = manager

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.manager.draining:
            logger.info("signal %d: readiness off, finishing in-flight requests", sig)
        self.manager.draining = True
        super().handle_exit(sig, frame)


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
    server = DrainingServer(config, app.state.manager)
    server.run()
    if not server.started:
        logger.error("the server did not start (see the error above)")
        return 3
    return 0
