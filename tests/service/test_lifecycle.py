"""Issue 10 defect 2: a batcher's stop() races no request. Admitted requests are answered, late ones are handed
to the new version or told to retry; under load, repeated hot swaps and an unload leave 0 failed and 0 timed
out requests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.batching import Batcher, Retired
from service.errors import ApiError
from service.metrics import Metrics
from tests.service.conftest import asgi_scope, make_client
from tests.service.test_app import INFER, json_request
from tests.service.test_batcher import FakeModel
from tests.service.test_batching import slow_model  # noqa: F401  (fixture)


def _batcher(model: FakeModel) -> Batcher:
    metrics = Metrics().version(model.name, str(model.version))
    return Batcher(model, max_queue_size=16, metrics=metrics)  # type: ignore[arg-type]


def test_stop_waits_for_admitted_requests_and_refuses_late_ones() -> None:
    async def scenario() -> None:
        model = FakeModel(max_queue_delay_us=0)
        model.release.set()
        batcher = _batcher(model)
        batcher.start()
        admission = batcher.admit()  # a request whose body is still being read
        stopping = asyncio.create_task(batcher.stop(grace_s=5))
        await asyncio.sleep(0.05)
        assert not stopping.done(), "stop() must wait for a request it admitted"
        with pytest.raises(Retired) as late:
            batcher.admit()
        assert late.value.status == 503 and late.value.headers == {"Retry-After": "1"}
        with admission:  # the admitted request arrives after stop() began: it is still answered
            out = await asyncio.wait_for(admission.infer((np.ones((1, 2), np.float32),), 5), 2)
        np.testing.assert_array_equal(out[0], np.full((1, 2), 2.0))
        await asyncio.wait_for(stopping, 2)
        with pytest.raises(ApiError) as after:  # infer() on a stopped batcher: an answer, not a hang
            await asyncio.wait_for(batcher.infer((np.ones((1, 2), np.float32),), 5), 2)
        assert after.value.status == 503

    asyncio.run(scenario())


def test_stop_gives_up_on_a_request_that_never_arrives() -> None:
    async def scenario() -> None:
        batcher = _batcher(FakeModel())
        batcher.start()
        batcher.admit()  # never queues, never leaves
        started = time.perf_counter()
        await asyncio.wait_for(batcher.stop(grace_s=0.2), 3)
        assert time.perf_counter() - started < 2

    asyncio.run(scenario())


async def asgi_post(app: Any, path: str, chunks: list[bytes], gap_s: float) -> tuple[int, dict[str, str]]:
    """POST ``chunks`` straight to the ASGI ``app``, ``gap_s`` apart (a client still sending its body)."""
    scope = asgi_scope(path, [(b"content-length", str(sum(map(len, chunks))).encode())])
    pending = list(chunks)
    answer: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        if not pending:
            await asyncio.sleep(3600)  # the body is complete: nothing more until the app answers
        if len(pending) < len(chunks):
            await asyncio.sleep(gap_s)
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}

    await app(scope, receive, send)
    return answer["status"], answer["headers"]


async def _swap_and_unload_under_load(app: Any, swaps: int) -> tuple[list[tuple[int, str, float]], int]:
    """Clients post slowly-sent bodies in a loop while the model is reloaded ``swaps`` times, then unloaded."""
    manager = app.state.manager
    body = json_request(np.zeros((1, 1, 8, 8), np.float32))
    results: list[tuple[int, str, float]] = []
    done = asyncio.Event()

    async def client() -> None:
        while not done.is_set():
            started = time.perf_counter()
            status, headers = await asgi_post(app, INFER, [body[:100], body[100:]], 0.005)
            results.append((status, headers.get("retry-after", ""), time.perf_counter() - started))
            await asyncio.sleep(0.001)  # a refusal never awaits: let the loop breathe

    clients = [asyncio.create_task(client()) for _ in range(8)]
    for _ in range(swaps):  # each load builds new batchers and retires the old ones
        await asyncio.sleep(0.05)
        await manager.load("digits")
    await asyncio.sleep(0.05)
    swapped = len(results)
    await manager.unload("digits")
    await asyncio.sleep(0.1)
    done.set()
    await asyncio.wait_for(asyncio.gather(*clients), 30)
    return results, swapped


def test_hot_swaps_and_unload_under_load_fail_and_time_out_nothing(
    model_repo: Path,
    slow_model: dict[str, float],  # noqa: F811
) -> None:
    with make_client(model_repo, request_timeout_s=5, max_queue_delay_ms=2) as c:
        slow_model["s"] = 0.005  # requests queue up behind each batch, so every swap finds some in flight
        results, swapped = c.portal.call(_swap_and_unload_under_load, c.app, 10)  # type: ignore[union-attr]
        during_swaps, after_unload = results[:swapped], results[swapped:]
        assert swapped > 50, f"only {swapped} requests during the swaps: no load"
        assert all(code == 200 for code, _, _ in during_swaps), sorted({code for code, _, _ in during_swaps})
        # after the unload: answered at once, 200 (admitted before it) or 503 with Retry-After, never 5xx/504
        assert all(code == 200 or (code == 503 and retry) for code, retry, _ in after_unload), after_unload
        assert max(seconds for _, _, seconds in results) < 2, "a request waited on a stopped batcher"
        assert c.post("/v2/repository/models/digits/load").status_code == 403  # control stays behind its key
        c.portal.call(c.app.state.manager.load, "digits")  # type: ignore[union-attr]
        assert c.post(INFER, content=json_request(np.zeros((1, 1, 8, 8)))).status_code == 200
