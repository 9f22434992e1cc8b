"""``create_app(settings)``: assembles the FastAPI app; nothing else happens in this file."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ApiError
from service.fastpath import InferenceApp
from service.manager import ModelManager
from service.metrics import Metrics
from service.routes import classify, control, health, infer, models
from service.routes import metrics as metrics_route
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)


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

    app = InferenceApp(
        title="bnfold inference server",
        summary="BatchNorm-free ONNX models over the Open Inference Protocol (v2) and an image endpoint",
        version=health.server_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.manager = manager
    for module in (health, models, infer, classify, control, metrics_route):
        app.include_router(module.router)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    return app
