"""Triton's statistics extension (HTTP ``/v2/models/.../stats`` and gRPC ``ModelStatistics``) against a real
bnfold-serve process, read with the unmodified tritonclient (HTTP and gRPC)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from service.statistics import BatchTimes, StatisticsMetrics, read_statistics
from service.tally import Tally
from tests.service.test_grpc import GrpcServerProcess, started

TRITON_KEYS = {
    "name",
    "version",
    "last_inference",
    "inference_count",
    "execution_count",
    "inference_stats",
    "batch_stats",
    "memory_usage",
    "response_stats",
}


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[GrpcServerProcess]:
    srv = started(model_repo)
    yield srv
    srv.stop()


def http_input(x: np.ndarray) -> Any:
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    return tensor


def grpc_input(x: np.ndarray) -> Any:
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_counts_equal_the_requests_and_batches_sent(server: GrpcServerProcess, digits_val: Any) -> None:
    x = np.ascontiguousarray(digits_val[0][:4], np.float32)
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    before = http.get_inference_statistics("digits")["model_stats"][0]
    assert before["inference_count"] == before["execution_count"] == 0 and before["batch_stats"] == []
    for i in range(3):  # one at a time: each is a batch of its own
        http.infer("digits", [http_input(x[i : i + 1])])
    for i in range(2):
        grpc.infer("digits", [grpc_input(x[i : i + 1])])
    http.infer("digits", [http_input(x)])  # one request of 4 samples
    with pytest.raises(InferenceServerException):  # admitted, then refused: a fail
        http.infer("digits", [http_input(x[:, :, :4])])

    stats = http.get_inference_statistics("digits", "1")["model_stats"]
    assert len(stats) == 1 and set(stats[0]) == TRITON_KEYS
    s = stats[0]
    assert (s["name"], s["version"]) == ("digits", "1")
    assert s["inference_count"] == 9 and s["execution_count"] == 6
    inference = s["inference_stats"]
    assert inference["success"]["count"] == 6 and inference["fail"]["count"] == 1
    for stat in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[stat]["ns"] > 0, stat
    for stat in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[stat]["count"] == 6, stat
    assert inference["success"]["ns"] >= inference["compute_infer"]["ns"]
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in s["batch_stats"]] == [(1, 5), (4, 1)]
    assert s["last_inference"] > 1_700_000_000_000  # milliseconds since the epoch

    # gRPC answers the same figures (uint64 as strings in protobuf's JSON)
    g = grpc.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert int(g["inference_count"]) == 9 and int(g["execution_count"]) == 6 and g["version"] == "1"
    assert int(g["inference_stats"]["success"]["count"]) == 6
    assert [(int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in g["batch_stats"]] == [(1, 5), (4, 1)]
    everything = http.get_inference_statistics()["model_stats"]
    assert [(m["name"], m["version"], m["inference_count"]) for m in everything] == [("digits", "1", 9)]


def test_unknown_model_or_version_is_a_clear_4xx(server: GrpcServerProcess) -> None:
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for client in (http, grpc):
        with pytest.raises(InferenceServerException, match="unknown model 'nope'; loaded models: digits"):
            client.get_inference_statistics("nope")
        with pytest.raises(InferenceServerException, match="no loaded version '7'; loaded versions: 1"):
            client.get_inference_statistics("digits", "7")
    with pytest.raises(InferenceServerException) as info:
        grpc.get_inference_statistics("digits", "7")
    assert str(info.value.status()) == "StatusCode.NOT_FOUND"


def test_read_back_from_the_registry() -> None:
    """The figures are the registry's series, exactly; a version that ran nothing reads as zeros."""
    registry = CollectorRegistry()
    first = StatisticsMetrics(registry).version("m", "1", Tally())
    times = BatchTimes(10, 100, 1)
    first.batch(2, times)
    first.answered(5, times)
    first.answered(7, times)
    first.request("success", 1000)
    doc = read_statistics(registry, [("m", "1"), ("other", "3")])["model_stats"]
    assert doc[0]["inference_count"] == 2 and doc[0]["execution_count"] == 1
    assert doc[0]["inference_stats"]["queue"] == {"count": 2, "ns": 12}
    assert doc[0]["inference_stats"]["compute_infer"] == {"count": 2, "ns": 200}
    assert doc[0]["batch_stats"] == [
        {"batch_size": 2, **{s: {"count": 1, "ns": n} for s, n in [("compute_input", 10), ("compute_infer", 100),
                                                                   ("compute_output", 1)]}}
    ]  # fmt: skip
    assert doc[1]["name"] == "other" and doc[1]["execution_count"] == 0
