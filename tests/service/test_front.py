"""The server's front (service.routes.infer.InferenceFront, as service.server.front builds it): inference
straight to its handler, everything else to the app, the same answers either way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi.testclient import TestClient

from service.app import create_app
from service.server import front
from service.settings import Settings
from tests.service.conftest import direct_logits
from tests.service.test_app import INFER, binary_request, json_request, logits_of


def spied_front(repo: Path) -> tuple[Any, list[str | None]]:
    """The server's front over a fresh app, its fallback recording the path of every scope it is handed."""
    app = create_app(Settings(repository=repo))
    served = front(app)
    fallback = served.fallback
    seen: list[str | None] = []

    def spy(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        seen.append(scope.get("path"))
        call: Callable[..., Awaitable[None]] = fallback
        return call(scope, receive, send)

    served.fallback = spy
    return served, seen


def asgi3(app: Any) -> Callable[..., Awaitable[None]]:
    """``app`` as a coroutine function: the front's ``__call__`` is a plain function, which Starlette's
    TestClient would take for ASGI 2 (uvicorn is told ``interface="asgi3"``)."""

    async def call(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    return call


def binary_logits(response: Any) -> np.ndarray:
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    shape = header["outputs"][0]["shape"]
    return np.frombuffer(response.content[length:], np.float32).reshape(shape)


def test_inference_is_answered_by_the_front_and_everything_else_by_the_app(
    model_repo: Path, digits_val: tuple[np.ndarray, np.ndarray]
) -> None:
    served, seen = spied_front(model_repo)
    x = np.asarray(digits_val[0][:3], np.float32)
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", x)
    with TestClient(asgi3(served), raise_server_exceptions=False) as client:
        body, headers = binary_request(x, parameters={"binary_data_output": True})
        r = client.post(INFER, content=body, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        np.testing.assert_array_equal(binary_logits(r), expected)
        r = client.post("/v2/models/digits/versions/1/infer", content=json_request(x))
        assert r.status_code == 200
        np.testing.assert_array_equal(logits_of(r), expected)
        assert client.get("/v2/health/ready").status_code == 200
    assert not any(path and path.endswith("/infer") for path in seen), seen
    assert "/v2/health/ready" in seen


def test_the_front_answers_errors_and_paths_as_the_router_does(
    model_repo: Path, digits_val: tuple[np.ndarray, np.ndarray]
) -> None:
    served, seen = spied_front(model_repo)
    x = np.asarray(digits_val[0][:1], np.float32)
    with TestClient(asgi3(served), raise_server_exceptions=False) as client:
        missing = client.post("/v2/models/nope/infer", content=json_request(x))
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        assert client.post("/v2/models/digits/versions/7/infer", content=json_request(x)).status_code == 404
        assert client.post(INFER, content=b"{").status_code == 400
        # not an inference path for the router either: the app answers (405 for GET, 404 for a deeper path)
        assert client.get(INFER).status_code == 405
        assert client.post(INFER + "/more", content=b"{}").status_code == 404
    assert seen.count(INFER) == 1 and INFER + "/more" in seen


def test_while_draining_the_front_answers_with_connection_close(
    model_repo: Path, digits_val: tuple[np.ndarray, np.ndarray]
) -> None:
    served, _ = spied_front(model_repo)
    x = np.asarray(digits_val[0][:1], np.float32)
    with TestClient(asgi3(served), raise_server_exceptions=False) as client:
        assert "close" not in client.post(INFER, content=json_request(x)).headers.get("connection", "")
        served.manager.draining = True
        r = client.post(INFER, content=json_request(x))
        assert r.status_code == 200 and r.headers["connection"] == "close"
        served.manager.draining = False
