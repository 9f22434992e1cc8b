"""``create_app(settings)``: assembles the FastAPI app; nothing else happens in this file."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.errors import validation_problems
from service import tracing
from service.draining import DrainingConnections
from service.errors import ApiError, error_response
from service.manager import ModelManager
from service.metrics import Metrics
from service.routes import classify, control, health, infer, models, statistics
from service.routes import metrics as metrics_route
from service.schemas import add_body_schemas
from service.settings import Settings, get_settings
from service.ui import add_page

logger = logging.getLogger(__name__)


def _answer(exc: Exception, request: Request) -> Response:
    status, body, headers = error_response(exc, f"{request.method} {request.url.path}")
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _add_error_handlers(app: FastAPI) -> None:
    """Every route answers errors through :func:`service.errors.error_response`."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _answer(ApiError(exc.status_code, str(exc.detail), dict(exc.headers or {})), request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = validation_problems(exc)
        return _answer(ApiError(400, problems), request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _answer(exc, request)

    @app.exception_handler(Exception)  # anything unexpected: a 500 with a request id (uvicorn logs it too)
    async def any_error(request: Request, exc: Exception) -> Response:
        return _answer(exc, request)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The inference app; models load (and warm up) in its lifespan, before it reports ready."""
    settings = settings or get_settings()
    metrics = Metrics()
    manager = ModelManager(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.load_all()
        logger.info("ready: %s", ", ".join(f"{n} v{max(v)}" for n, v in manager.models.items()) or "no models")
        yield
        manager.draining = True
        await manager.stop()

    app = FastAPI(
        title="bnfold inference server",
        summary="BatchNorm-free ONNX models over the Open Inference Protocol (v2) and an image endpoint",
        version=health.server_version(),
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.manager = manager
    inference = infer.routes()
    app.router.routes[:0] = inference  # documented and routed like any route
    for module in (health, statistics, models, classify, control, metrics_route):  # stats before {model}
        app.include_router(module.router)
    if settings.ui:
        add_page(app)
    app.add_middleware(infer.InferenceRoutes, routes=inference)  # the hot path: innermost user middleware
    app.add_middleware(DrainingConnections, manager=manager)
    provider = tracing.configure(settings.tracing)
    if provider is not None:
        tracing.add_http_tracing(app, provider)
    _add_error_handlers(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return add_body_schemas(generate())

    app.openapi = openapi  # type: ignore[method-assign]
    return app
