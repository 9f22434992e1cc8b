"""``GRPCInferenceService`` answered from the HTTP server's model manager, batchers and metrics.

A gRPC inference request joins the same per-version queue as HTTP requests, so the two can share a batch,
and is counted in the same Prometheus series. Expected failures (:class:`service.errors.ApiError`) end the
RPC with the gRPC status Triton uses for the same condition (see :data:`STATUS`); anything else is logged
with its stack and answered INTERNAL. The repository RPCs take the HTTP API's key from the call metadata
(``authorization: Bearer <key>`` or ``x-api-key: <key>``).

Inference goes through the one pipeline the HTTP routes use (``service.pipeline.infer_decoded``): admission
on the batcher, validation, batching (an HTTP and a gRPC request can share a batch) and the error policy.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import json_format
from starlette.requests import Request
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceServicer

from service.deps import require_api_key
from service.errors import ApiError
from service.grpc.codec import decode_infer_request, encode_infer_response
from service.manager import ModelManager
from service.model_config import model_config
from service.pipeline import infer_decoded
from service.routes.control import index
from service.routes.health import EXTENSIONS, server_version
from service.routes.models import metadata
from service.routes.statistics import statistics
from service.settings import Settings

logger = logging.getLogger(__name__)

STATUS = {  # ApiError.status -> the gRPC code Triton answers for the same condition
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
Reply = TypeVar("Reply")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Reply]]


def rpc(method: Handler[Reply]) -> Handler[Reply]:
    """End the RPC with the mapped status on ApiError, INTERNAL (logged) on anything unexpected."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Reply:
        try:
            return await method(self, request, context)
        except ApiError as exc:
            await context.abort(STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except Exception:
            logger.exception("unexpected error in gRPC %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        raise AssertionError("context.abort returns only by raising")  # pragma: no cover

    return wrapper


class _Metadata:
    """Call metadata where :func:`service.deps.require_api_key` reads request headers."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.headers = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class Servicer(GRPCInferenceServiceServicer):
    """Every RPC of the v2 protocol that bnfold serves over HTTP (no shared memory, trace settings or logging)."""

    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings

    # ---- health and metadata -----------------------------------------------------------------------------
    @rpc
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        m = self.manager
        return pb.ServerReadyResponse(ready=m.is_ready())

    @rpc
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="bnfold", version=server_version(), extensions=EXTENSIONS)

    @rpc
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Ready or not, as Triton answers: an unknown or unavailable model is not ready, not an error."""
        try:
            self.manager.get(request.name, request.version)
        except ApiError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        served = self.manager.get(request.name, request.version)
        doc = metadata(served, sorted(self.manager.models[request.name]))
        return json_format.ParseDict(doc, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    @rpc
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        served = self.manager.get(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config(served.model))

    @rpc
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's statistics, read from the same registry as HTTP ``/v2/models/.../stats``."""
        doc = statistics(self.manager, self.manager.metrics, request.name, request.version)
        return json_format.ParseDict(doc, pb.ModelStatisticsResponse())

    # ---- inference ---------------------------------------------------------------------------------------
    @rpc
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The HTTP route's pipeline (service.pipeline) with gRPC's codec; the deadline bounds the wait."""
        version = request.model_version or None
        with self.manager.grpc_call():
            result = await infer_decoded(
                self.manager,
                request.model_name,
                version,
                lambda: decode_infer_request(request),
                context.time_remaining(),
            )
        return encode_infer_response(result.model_name, result.model_version, result.id, result.outputs)

    # ---- model repository (API key) ----------------------------------------------------------------------
    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        require_api_key(cast(Request, _Metadata(context)), self.settings)

    @rpc
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        rows = await index(self.manager)
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=r["name"], version=r["version"], state=r["state"], reason=r["reason"]
            )
            for r in rows
            if r["state"] == "READY" or not request.ready
        ]
        return pb.RepositoryIndexResponse(models=models)

    @rpc
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        entry = await self.manager.load(request.model_name)
        if entry.failed:  # as the HTTP route: a load that fell back to an older version has a reason, and served
            raise ApiError(400, entry.reason)
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        await self.manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
