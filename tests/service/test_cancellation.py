"""Cancellation: requests whose clients give up while queued (HTTP disconnect, gRPC cancel) are dropped before
they reach ONNX Runtime and counted, with the unmodified tritonclient against a real bnfold-serve process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.service.test_grpc import GrpcServerProcess, started
from tests.service.test_queue_policy import CANCEL_BATCH, SHAPE, policy_repo, wait_for  # noqa: F401

QUEUED = 100
SLOW = 8  # full batches ahead of them (seconds of compute in all), so clients give up while they wait


@pytest.fixture(scope="module")
def server(policy_repo: Path) -> Iterator[GrpcServerProcess]:  # noqa: F811
    srv = started(policy_repo)
    yield srv
    srv.stop()


def metric(server: GrpcServerProcess, prefix: str, text: str | None = None) -> float:
    """The value of the /metrics series of model ``cancel`` that starts with ``prefix`` (in ``text``, if given)."""
    for line in (text or httpx.get(f"{server.url}/metrics").text).splitlines():
        if line.startswith(prefix) and 'model="cancel"' in line:
            return float(line.split()[-1])
    return 0.0


def grpc_tensor(n: int) -> Any:
    tensor = grpcclient.InferInput("input", [n, *SHAPE], "FP32")
    tensor.set_data_from_numpy(np.zeros((n, *SHAPE), np.float32))
    return tensor


def all_queued(server: GrpcServerProcess, started_at: float) -> bool:
    """Every request sent is queued: :data:`QUEUED` behind the slow batches that have not started yet."""
    text = httpx.get(f"{server.url}/metrics").text
    started = metric(server, "bnfold_queue_seconds_count", text) - started_at
    return metric(server, "bnfold_queue_depth", text) == QUEUED + SLOW - started


def give_up(server: GrpcServerProcess, protocol: str, started_at: float) -> None:
    """Queue :data:`QUEUED` one-sample requests behind the slow batches, then give each up as a client does."""
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc_url)
        calls = [client.async_infer("cancel", [grpc_tensor(1)], callback=lambda **_: None) for _ in range(QUEUED)]
        wait_for(lambda: all_queued(server, started_at), "the requests never queued", 60)
        for call in calls:
            call.cancel()
        return
    # tritonclient.http gives up when its network timeout passes: it closes the connection
    client = httpclient.InferenceServerClient(
        server.url.removeprefix("http://"), concurrency=QUEUED, network_timeout=0.3
    )
    tensor = httpclient.InferInput("input", [1, *SHAPE], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, *SHAPE), np.float32))
    pending = [client.async_infer("cancel", [tensor]) for _ in range(QUEUED)]
    for request in pending:  # each ends in a socket timeout (the server's counts below say they were cancelled)
        with contextlib.suppress(Exception):
            request.get_result()
    client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_requests_cancelled_while_queued_never_run(server: GrpcServerProcess, protocol: str) -> None:
    stats = grpcclient.InferenceServerClient(server.grpc_url)

    def executions() -> int:
        return int(stats.get_inference_statistics("cancel").model_stats[0].execution_count)

    key = 'bnfold_requests_total{model="cancel",outcome="cancelled"'
    before, cancelled = executions(), metric(server, key)
    fails = int(stats.get_inference_statistics("cancel").model_stats[0].inference_stats.fail.count)
    slow: list[Any] = []
    started_at = metric(server, "bnfold_queue_seconds_count")
    for _ in range(SLOW):
        stats.async_infer(
            "cancel", [grpc_tensor(CANCEL_BATCH)], callback=lambda result, error: slow.append(error or result)
        )
    wait_for(lambda: metric(server, "bnfold_queue_seconds_count") > started_at, "the slow batch never started")
    give_up(server, protocol, started_at)
    assert len(slow) < SLOW, "the slow batches ended before the clients gave up: the test proves nothing"
    wait_for(lambda: len(slow) == SLOW, "the slow batches never ended", 180)
    assert not any(isinstance(r, Exception) for r in slow), slow
    try:
        wait_for(lambda: metric(server, key) - cancelled == QUEUED, "the cancelled requests were not counted", 30)
    except AssertionError:
        lines = httpx.get(f"{server.url}/metrics").text.splitlines()
        raise AssertionError([ln for ln in lines if 'model="cancel"' in ln and "bucket" not in ln]) from None
    time.sleep(0.2)  # a further batch, if any, has begun by now; it must not be more than one
    assert executions() - before <= SLOW + 1, "requests whose clients gave up were computed"  # at most one batch
    s = stats.get_inference_statistics("cancel").model_stats[0]
    assert int(s.inference_stats.fail.count) - fails == QUEUED
    assert metric(server, "bnfold_queue_depth") == 0
