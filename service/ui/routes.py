"""The page's routes: ``GET /`` (the page), ``/ui/static/*`` (its assets) and two read-only JSON documents.

Every answer of the page carries a Content-Security-Policy that allows scripts, styles, images and
connections from this origin only, no inline script or style, no plugin, no framing; the JSON documents
are read-only views (the page changes nothing: no model control).
"""

from __future__ import annotations

from pathlib import Path

import orjson
from fastapi import APIRouter, FastAPI, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from service.deps import ManagerDep, MetricsDep
from service.metrics import collecting_registry
from service.ui.summary import live_summary, models_summary

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["page"], include_in_schema=False)


class PageAssets(StaticFiles):
    """The page's files, shipped in the package, answered with :data:`HEADERS`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def _json(document: object) -> Response:
    return Response(orjson.dumps(document), media_type="application/json", headers=HEADERS)


@router.get("/")
async def page() -> Response:
    return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui/api/models")
async def models(manager: ManagerDep) -> Response:
    return _json(models_summary(manager))


@router.get("/ui/api/live")
async def live(metrics: MetricsDep) -> Response:
    return _json(live_summary(collecting_registry(metrics).collect()))


def add_page(app: FastAPI) -> None:
    """Serve the page on ``app`` (``BNFOLD_UI``; without it none of these routes exist)."""
    app.include_router(router)
    app.mount("/ui/static", PageAssets(directory=STATIC), name="ui-static")
