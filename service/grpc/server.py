"""The ``grpc.aio`` server's lifecycle, inside the HTTP server's event loop (see :mod:`service.server`).

It listens on ``BNFOLD_GRPC_PORT`` at ``BNFOLD_HOST`` once the models are loaded (with ``SO_REUSEPORT`` in
each worker of a supervised server, see :mod:`service.workers.supervisor`), takes messages up to
``BNFOLD_MAX_BODY_BYTES`` (larger ones end RESOURCE_EXHAUSTED before any decoding), and on shutdown stops
taking RPCs at once and gives those in flight ``BNFOLD_GRACEFUL_TIMEOUT_S`` to finish.
"""

from __future__ import annotations

import logging

import grpc
from tritonclient.grpc.service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

from service.grpc.servicer import Servicer
from service.manager import ModelManager
from service.settings import Settings
from service.tracing import grpc_interceptors

logger = logging.getLogger(__name__)


class GrpcServer:
    """Start and drain the gRPC side of a bnfold server."""

    def __init__(self, manager: ModelManager, settings: Settings, shared_port: bool = False) -> None:
        self.manager = manager
        self.shared_port = shared_port  # a worker of a supervised server: every worker listens on the port
        self.settings = settings
        self.server: grpc.aio.Server | None = None
        self.port = 0

    def address(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{host}:{self.settings.grpc_port}"

    async def start(self) -> None:
        """Bind and start; raises RuntimeError naming the address when the port cannot be bound."""
        limit = self.settings.max_body_bytes
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            # a port in use must fail here, not be shared with another process; the workers of one server share
            # it (the supervisor holds it with SO_REUSEPORT, so a taken port fails the start there)
            ("grpc.so_reuseport", int(self.shared_port)),
        ]
        server = grpc.aio.server(options=options, interceptors=grpc_interceptors(self.settings.tracing))
        add_GRPCInferenceServiceServicer_to_server(Servicer(self.manager, self.settings), server)
        try:
            self.port = server.add_insecure_port(self.address())
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {self.address()} (BNFOLD_GRPC_PORT): {exc}") from None
        await server.start()
        self.server = server
        logger.info("gRPC (v2 GRPCInferenceService) listening on %s", self.address())

    async def stop(self) -> None:
        """Refuse new RPCs now; wait up to ``graceful_timeout_s`` for those in flight, then cancel them."""
        if self.server is not None:
            await self.server.stop(self.settings.graceful_timeout_s)
            self.server = None
