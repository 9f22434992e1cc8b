"""gRPC v2 against real bnfold-serve processes on loopback, with the unmodified tritonclient.grpc (and, for
typed tensor contents, which tritonclient never sends, the stub that tritonclient ships)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub
from tritonclient.utils import InferenceServerException

from tests.service.conftest import ServerProcess, direct_logits, free_port
from tests.service.test_app import binary_request
from tests.service.test_server import slow_repo  # noqa: F401  (a fixture: a model slow enough to queue behind)

KEY = "s3cret-key"
MAX_BYTES = 65536


class GrpcServerProcess(ServerProcess):
    """A bnfold-serve process with gRPC on its own free port."""

    def __init__(self, repo: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        super().__init__(repo, *args, env={"BNFOLD_GRPC_PORT": str(self.grpc_port), **(env or {})})

    def client(self) -> Any:
        return grpcclient.InferenceServerClient(self.grpc_url)


def started(repo: Path, *args: str, **env: str) -> GrpcServerProcess:
    srv = GrpcServerProcess(repo, *args, env=env)
    try:
        srv.wait_ready()
    except Exception:
        srv.stop()
        raise
    return srv


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[GrpcServerProcess]:
    srv = started(model_repo, "--max-body-bytes", str(MAX_BYTES), BNFOLD_API_KEY=KEY)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: GrpcServerProcess) -> Iterator[Any]:
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def samples(digits_val: Any) -> np.ndarray:
    return np.ascontiguousarray(digits_val[0][:4], np.float32)


def raw_input(x: np.ndarray, datatype: str = "FP32") -> Any:
    inp = grpcclient.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def status_of(call: Callable[[], Any]) -> tuple[str, str]:
    """(gRPC status name, message) of a call that must fail."""
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()).removeprefix("StatusCode."), str(info.value.message())


def test_health_metadata_and_config_match_http(server: GrpcServerProcess, client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("digits", "7")
    meta = client.get_server_metadata()
    assert meta.name == "bnfold" and "classification" in meta.extensions
    http_meta = httpx.get(f"{server.url}/v2/models/digits").json()
    grpc_meta = client.get_model_metadata("digits", as_json=True)
    assert grpc_meta["name"] == "digits" and grpc_meta["versions"] == ["1"]
    for key in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in grpc_meta[key]] == [
            (t["name"], t["datatype"], t["shape"]) for t in http_meta[key]
        ]
    config = client.get_model_config("digits").config
    http_config = httpx.get(f"{server.url}/v2/models/digits/config").json()
    assert config.max_batch_size == http_config["max_batch_size"] == 16
    assert config.platform == "onnxruntime_onnx" and config.input[0].data_type == mc.TYPE_FP32
    assert list(config.input[0].dims) == http_config["input"][0]["dims"]
    assert config.output[0].label_filename == "labels.txt"
    assert (
        config.dynamic_batching.max_queue_delay_microseconds
        == http_config["dynamic_batching"]["max_queue_delay_microseconds"]
    )


def test_infer_raw_contents_matches_onnx_runtime(client: Any, model_repo: Path, samples: np.ndarray) -> None:
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", samples)
    outputs = [grpcclient.InferRequestedOutput("logits")]
    result = client.infer("digits", [raw_input(samples)], outputs=outputs, request_id="req-raw")
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response.id == "req-raw" and response.model_version == "1" and len(response.raw_output_contents) == 1
    # no outputs named: every output comes back
    np.testing.assert_allclose(client.infer("digits", [raw_input(samples)]).as_numpy("logits"), expected, rtol=1e-5)


def typed_request(x: np.ndarray, **outputs: int) -> Any:
    request = pb.ModelInferRequest(model_name="digits", id="req-typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    for name, classes in outputs.items():
        out = request.outputs.add(name=name)
        if classes:
            out.parameters["classification"].int64_param = classes
    return request


@pytest.fixture
def stub(server: GrpcServerProcess) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield GRPCInferenceServiceStub(channel)


def test_infer_typed_contents_matches_onnx_runtime(stub: Any, model_repo: Path, samples: np.ndarray) -> None:
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", samples)
    response = stub.ModelInfer(typed_request(samples, logits=0), timeout=30)
    assert response.id == "req-typed" and not response.raw_output_contents
    out = response.outputs[0]
    assert out.name == "logits" and out.datatype == "FP32" and list(out.shape) == list(expected.shape)
    got = np.asarray(out.contents.fp32_contents, np.float32).reshape(list(out.shape))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def check_top3(rows: np.ndarray, expected: np.ndarray) -> None:
    assert rows.shape == (len(expected), 3)
    for row, logits in zip(rows, expected, strict=True):
        score, index, label = (row[0].decode() if isinstance(row[0], bytes) else row[0]).split(":")
        assert int(index) == int(logits.argmax()) and label == index
        assert float(score) == pytest.approx(float(logits.max()), abs=1e-5)


def test_classification_in_both_content_modes(client: Any, stub: Any, model_repo: Path, samples: np.ndarray) -> None:
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", samples)
    out = grpcclient.InferRequestedOutput("logits", class_count=3)
    check_top3(client.infer("digits", [raw_input(samples)], outputs=[out]).as_numpy("logits"), expected)
    response = stub.ModelInfer(typed_request(samples, logits=3), timeout=30)
    assert response.outputs[0].datatype == "BYTES"
    check_top3(np.asarray(response.outputs[0].contents.bytes_contents).reshape(4, 3), expected)


def test_repository_api_needs_the_key(client: Any) -> None:
    for headers in (None, {"authorization": "Bearer wrong"}):
        code, message = status_of(lambda h=headers: client.get_model_repository_index(headers=h))
        assert code == "UNAUTHENTICATED" and "missing or wrong API key" in message
        code, _ = status_of(lambda h=headers: client.unload_model("digits", headers=h))
        assert code == "UNAUTHENTICATED"
    assert client.is_model_ready("digits")

    for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
        index = client.get_model_repository_index(headers=headers, as_json=True)["models"]
        assert {"name": "digits", "version": "1", "state": "READY"}.items() <= index[0].items()
        client.unload_model("digits", headers=headers)
        assert not client.is_model_ready("digits")
        index = client.get_model_repository_index(headers=headers, as_json=True)["models"]
        assert index[0]["state"] == "UNAVAILABLE" and index[0]["reason"] == "unloaded"
        client.load_model("digits", headers=headers)
        assert client.is_model_ready("digits")
    code, message = status_of(lambda: client.load_model("absent", headers={"x-api-key": KEY}))
    assert code == "NOT_FOUND" and "no model 'absent' in the repository" in message


def test_bad_requests_get_tritons_status_codes(client: Any, stub: Any, samples: np.ndarray) -> None:
    code, message = status_of(lambda: client.infer("digits", [raw_input(samples[:, :, :4])]))
    assert code == "INVALID_ARGUMENT" and f"shape {list(samples[:, :, :4].shape)}, expected [-1, " in message
    code, message = status_of(lambda: client.infer("digits", [raw_input(samples.astype(np.float64), "FP64")]))
    assert code == "INVALID_ARGUMENT" and "datatype FP64, expected FP32" in message
    code, message = status_of(lambda: client.infer("nope", [raw_input(samples)]))
    assert code == "NOT_FOUND" and "unknown model 'nope'; loaded models: digits" in message
    code, message = status_of(lambda: client.infer("digits", [raw_input(samples)], model_version="7"))
    assert code == "NOT_FOUND" and "no loaded version '7'" in message
    big = np.zeros((MAX_BYTES // samples[0].nbytes + 1, *samples.shape[1:]), np.float32)
    code, message = status_of(lambda: client.infer("digits", [raw_input(big)]))
    assert code == "RESOURCE_EXHAUSTED" and f"vs. {MAX_BYTES}" in message
    too_many = np.zeros((17, *samples.shape[1:]), np.float32)  # under the message limit, over max_batch_size
    code, message = status_of(lambda: client.infer("digits", [raw_input(too_many)]))
    assert code == "INVALID_ARGUMENT" and "at most 16 per request" in message

    def stub_error(request: Any) -> tuple[str, str]:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        return info.value.code().name, info.value.details()

    short = pb.ModelInferRequest(model_name="digits", raw_input_contents=[samples.tobytes()[:-4]])
    short.inputs.add(name="input", datatype="FP32", shape=list(samples.shape))
    code, message = stub_error(short)
    assert code == "INVALID_ARGUMENT" and f"holds {samples.nbytes - 4} bytes" in message
    wrong_field = typed_request(samples)
    wrong_field.inputs[0].contents.Clear()
    wrong_field.inputs[0].contents.int_contents.extend([0] * samples.size)
    code, message = stub_error(wrong_field)
    assert code == "INVALID_ARGUMENT" and "takes its values in contents.fp32_contents" in message
    # the server is still fine
    assert client.infer("digits", [raw_input(samples)]).as_numpy("logits").shape == (4, 10)


def test_queue_full_and_timeouts_over_grpc(slow_repo: Path) -> None:  # noqa: F811
    """One slot of queue and a 1 ms request timeout on a model that takes far longer per sample: a burst of
    8 gets both refusals, each with its message; then the server still drains and exits 0."""
    srv = started(slow_repo, "--max-queue-size", "1", "--request-timeout-s", "0.001")
    try:
        client = srv.client()
        x = np.zeros((1, 3, 96, 96), np.float32)
        seen: list[tuple[str, str]] = []
        # "queue is full" needs a request to arrive within 1 ms of the queued one (which then times out): on a
        # loaded machine a burst's calls can reach the server further apart, so up to 5 bursts, every outcome
        # checked, until both refusals have been seen
        for _ in range(5):
            with ThreadPoolExecutor(8) as pool:
                seen += pool.map(lambda _: status_of(lambda: client.infer("slow", [raw_input(x)])), range(8))
            if {code for code, _ in seen} >= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}:
                break
        assert {code for code, _ in seen} == {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, seen
        for code, message in seen:
            expected = "queue is full (1 requests); retry" if code == "UNAVAILABLE" else "timed out after 0.001 s"
            assert expected in message
        # no key configured: the repository RPCs are switched off, not open
        code, message = status_of(client.get_model_repository_index)
        assert code == "PERMISSION_DENIED" and "model control is disabled" in message
        client.close()
        srv.proc.terminate()  # requests that timed out leave nothing behind that would hold the drain
        assert srv.proc.wait(timeout=60) == 0
    finally:
        srv.stop()


def slow_metrics(url: str) -> dict[str, float]:
    """The slow model's Prometheus series (histogram counts and sums) by metric name."""
    values: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if 'model="slow"' in line and line.split("{")[0].endswith(("_count", "_sum")):
            values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return values


def test_an_http_and_a_grpc_request_share_a_batch(slow_repo: Path) -> None:  # noqa: F811
    srv = started(slow_repo, "--max-batch-size", "8")
    try:
        client, http_client = srv.client(), httpx.Client(base_url=srv.url, timeout=60)
        one = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
        assert client.is_server_live()  # the gRPC channel is open before the blocker starts
        eight, eight_headers = binary_request(np.repeat(one, 8, axis=0))
        one_body, one_headers = binary_request(one)
        path = "/v2/models/slow/infer"
        with ThreadPoolExecutor(3) as pool:
            blocker = pool.submit(http_client.post, path, content=eight, headers=eight_headers)
            # once the blocker (8 samples, hundreds of ms of work) has started, the next two queue behind it
            while slow_metrics(srv.url).get("bnfold_queue_seconds_count", 0) < 1:
                time.sleep(0.005)
            http = pool.submit(http_client.post, path, content=one_body, headers=one_headers)
            via_grpc = pool.submit(client.infer, "slow", [raw_input(one)])
            assert blocker.result().status_code == 200 and http.result().status_code == 200
            assert via_grpc.result().as_numpy("logits").shape == (1, 4)
        batches = slow_metrics(srv.url)
        assert (batches["bnfold_batch_size_count"], batches["bnfold_batch_size_sum"]) == (2, 10), (
            "the HTTP and the gRPC request did not run as one batch"
        )
        client.close()
        http_client.close()
    finally:
        srv.stop()


# per protocol: 384 slow requests run one at a time. With 96 the work left at the signal lasted 0.6-1.9 s on the
# 2-core machine, sometimes less than the drain delay plus the late call's margin (0.9 s): a flaky failure
BURST = 192
DRAIN_DELAY_S = 0.6
Results = list[tuple[str, Any, float]]  # (protocol, status or error, time it completed)


def _queued(srv: GrpcServerProcess) -> float:
    """Requests waiting in the slow model's queue now (bnfold_queue_depth, from /metrics)."""
    text = httpx.get(f"{srv.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("bnfold_queue_depth{"))


def _burst(srv: GrpcServerProcess, client: Any, x: np.ndarray, results: Results) -> list[threading.Thread]:
    """BURST requests over HTTP and BURST over gRPC, each in its own thread; returns once the server has
    queued all but the few it may be running, so every one of them was accepted before the signal."""
    body, headers = binary_request(x)

    def over_http() -> None:
        try:
            r = httpx.post(f"{srv.url}/v2/models/slow/infer", content=body, headers=headers, timeout=60)
            results.append(("http", r.status_code, time.monotonic()))
        except httpx.HTTPError as exc:
            results.append(("http", exc, time.monotonic()))

    def over_grpc() -> None:
        try:
            client.infer("slow", [raw_input(x)], client_timeout=60)
            results.append(("grpc", 200, time.monotonic()))
        except InferenceServerException as exc:
            results.append(("grpc", exc, time.monotonic()))

    threads = [threading.Thread(target=f) for f in (over_http, over_grpc) * BURST]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(results) + _queued(srv) < 2 * BURST - 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return threads


def test_sigterm_drains_grpc_and_http_together_losing_nothing(slow_repo: Path) -> None:  # noqa: F811
    srv = started(slow_repo, "--drain-delay-s", str(DRAIN_DELAY_S))
    try:
        x = np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32)
        client, results = srv.client(), []
        threads = _burst(srv, client, x, results)
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        # readiness off well within the drain delay (the signal reaches the server's loop asynchronously; a
        # call sent right after kill() can be answered first), while the server still serves
        while client.is_server_ready():
            assert time.monotonic() - signalled < DRAIN_DELAY_S / 2, "readiness still on halfway into the drain delay"
            time.sleep(0.01)
        assert client.is_server_live()
        # after the drain delay both protocols stop taking requests while the burst is still in flight
        time.sleep(max(0.0, signalled + DRAIN_DELAY_S + 0.3 - time.monotonic()))
        late = srv.client()
        late_sent = time.monotonic()
        code, _ = status_of(lambda: late.infer("slow", [raw_input(x)], client_timeout=10))
        assert code == "UNAVAILABLE", "a request after the drain delay was accepted"
        late.close()
        for t in threads:
            t.join(timeout=120)
        assert srv.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert len(results) == 2 * BURST
        lost = [(p, r) for p, r, _ in results if r != 200]
        assert not lost, lost
        after = {p: sum(1 for q, r, t in results if q == p and t > signalled) for p in ("http", "grpc")}
        assert after["http"] >= 3 and after["grpc"] >= 3, f"too few requests in flight at SIGTERM: {after}"
        # the refusal came from a server still answering the burst, not from one that had already gone
        assert any(t > late_sent for _, _, t in results), "the burst had ended before the late call was sent"
        client.close()
    finally:
        srv.stop()


def test_a_taken_grpc_port_stops_the_server_with_a_clear_error(model_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = ServerProcess(model_repo, env={"BNFOLD_GRPC_PORT": str(port)})
        try:
            code = srv.proc.wait(timeout=60)
            out = srv.output()
        finally:
            srv.stop()
    assert code == 3, out
    assert f"cannot listen for gRPC on 127.0.0.1:{port} (BNFOLD_GRPC_PORT)" in out


def test_a_grpc_inference_is_counted_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelInfer counts itself (ModelManager.grpc_call) while it runs, published to the other workers, and
    uncounts itself however it ends: the server knows whether a request is alone (service.server)."""
    from types import SimpleNamespace

    from service.errors import bad_request
    from service.grpc import servicer as servicer_module
    from service.manager import ModelManager
    from service.metrics import Metrics
    from service.settings import Settings

    manager = ModelManager(Settings(), Metrics())
    published: list[int] = []
    manager.cluster = SimpleNamespace(publish_grpc_calls=published.append)
    seen: list[int] = []

    async def infer(manager: ModelManager, *args: Any) -> Any:
        seen.append(manager.grpc_calls)
        if len(seen) == 2:
            raise bad_request("refused")
        return SimpleNamespace(model_name="m", model_version="1", id="", outputs=[])

    class Context:
        def time_remaining(self) -> None:
            return None

        async def abort(self, code: Any, message: str) -> None:
            raise grpc.aio.AbortError(code, message)

    monkeypatch.setattr(servicer_module, "infer_decoded", infer)
    servicer = servicer_module.Servicer(manager, manager.settings)

    async def scenario() -> None:
        await servicer.ModelInfer(pb.ModelInferRequest(model_name="m"), Context())
        with pytest.raises(grpc.aio.AbortError):
            await servicer.ModelInfer(pb.ModelInferRequest(model_name="m"), Context())

    import asyncio

    asyncio.run(scenario())
    assert seen == [1, 1] and manager.grpc_calls == 0
    assert published == [1, 0, 1, 0]
