"""Queue policy and priorities (Triton's ``dynamic_batching`` semantics) against a real bnfold-serve process,
with the unmodified tritonclient over HTTP and gRPC; the policy parser on its own."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub
from tritonclient.utils import InferenceServerException

from service.errors import ApiError
from service.queue_policy import QueuePolicy, QueuePolicyError
from tests.service.test_grpc import GrpcServerProcess, started

SHAPE = (3, 64, 64)
POLICIES = {  # model name -> dynamic_batching fields besides the delay
    "prio": "priority_levels: 2 default_priority_level: 2",
    "reject": "default_queue_policy { timeout_action: REJECT allow_timeout_override: true }",
    "delay": "default_queue_policy { timeout_action: DELAY allow_timeout_override: true }",
    "strict": "default_queue_policy { default_timeout_microseconds: 60000000 }",
    "cancel": "",  # batches of up to CANCEL_BATCH samples (tests/service/test_cancellation.py)
}
CANCEL_BATCH = 64


def policy_config(name: str, fields: str) -> str:
    """config.pbtxt of a one-sample-per-batch model (but ``cancel``) with the given dynamic_batching fields."""
    batch = CANCEL_BATCH if name == "cancel" else 1
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=batch)
    config.input.add(name="input", data_type=mc.TYPE_FP32, dims=list(SHAPE))
    config.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[4], label_filename="labels.txt")
    text_format.Parse(f"max_queue_delay_microseconds: 0 {fields}", config.dynamic_batching)
    return str(text_format.MessageToString(config))


@pytest.fixture(scope="session")
def policy_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models that take tens of milliseconds per sample, one sample per batch, under each policy of :data:`POLICIES`."""
    import torch

    from export.emit.from_torch import export_onnx
    from export.repository.writer import new_version
    from training.models import build_model

    repo = tmp_path_factory.mktemp("policy_repo")
    onnx = tmp_path_factory.mktemp("policy_onnx") / "model.onnx"
    model = build_model("resnet", in_channels=3, depth=20, width=32, num_classes=4).eval()
    export_onnx(model, (torch.randn(2, *SHAPE),), onnx, random_samples=2)
    for name, fields in POLICIES.items():
        with new_version(repo, name, policy_config(name, fields), ["a", "b", "c", "d"]) as (staging, _):
            shutil.copy(onnx, staging / "model.onnx")
    return repo


@pytest.fixture(scope="module")
def server(policy_repo: Path) -> Iterator[GrpcServerProcess]:
    srv = started(policy_repo)
    yield srv
    srv.stop()


X = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(np.float32)


class Calls:
    """Inferences sent with tritonclient's own asynchronous calls (no thread per request, so a request leaves
    when it is sent), each stamped with the time its answer came: gRPC in its callback, HTTP when
    :meth:`wait` collects it (tritonclient.http sends from gevent greenlets, which run while it waits)."""

    def __init__(self, server: GrpcServerProcess) -> None:
        self.grpc = grpcclient.InferenceServerClient(server.grpc_url)
        self.http = httpclient.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8)
        self.ended: dict[int, tuple[float, Any]] = {}
        self._http: dict[int, Any] = {}

    def send(self, tag: int, protocol: str, model: str, **kw: Any) -> None:
        if protocol == "grpc":
            tensor: Any = grpcclient.InferInput("input", list(X.shape), "FP32")
            tensor.set_data_from_numpy(X)

            def done(result: Any, error: Any) -> None:
                self.ended[tag] = (time.monotonic(), error or result.as_numpy("logits"))

            self.grpc.async_infer(model, [tensor], callback=done, **kw)
        else:
            tensor = httpclient.InferInput("input", list(X.shape), "FP32")
            tensor.set_data_from_numpy(X)
            self._http[tag] = self.http.async_infer(model, [tensor], **kw)

    def wait(self, tags: range | list[int]) -> None:
        for tag in tags:
            if tag in self._http:
                try:
                    result: Any = self._http.pop(tag).get_result().as_numpy("logits")
                except InferenceServerException as exc:
                    result = exc
                self.ended[tag] = (time.monotonic(), result)
        wait_for(lambda: all(t in self.ended for t in tags), f"requests {tags} unanswered")

    def order(self) -> list[int]:
        return sorted(self.ended, key=lambda t: self.ended[t][0])

    def close(self) -> None:
        self.grpc.close()
        self.http.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_high_priority_waits_behind_no_low_priority(server: GrpcServerProcess, protocol: str) -> None:
    calls = Calls(server)
    low, high = range(48), range(48, 51)
    warm = range(100, 103)  # connections open before the flood, so the high-priority requests arrive together
    for tag in warm:
        calls.send(tag, protocol, "prio")
    calls.wait(warm)
    for tag in low:  # a flood of low-priority requests, one sample per batch
        calls.send(tag, "grpc", "prio", priority=2)
    wait_for(lambda: len(calls.ended) >= 1, "no low-priority request answered")
    answered_before = len(calls.ended)
    for tag in high:
        calls.send(tag, protocol, "prio", priority=1)
    calls.wait(high)
    calls.wait(low)
    calls.close()
    assert all(isinstance(r, np.ndarray) for _, r in calls.ended.values())
    last_high = max(calls.ended[t][0] for t in high)
    lows_meanwhile = sum(1 for t in low if calls.ended[t][0] < last_high) - answered_before
    assert len(low) - answered_before >= 24, "the flood drained before the high-priority requests came"
    # at most the low-priority batch running when they came, and one the batcher had already taken
    assert lows_meanwhile <= 2, (answered_before, calls.order())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_queue_timeout_reject_and_delay(server: GrpcServerProcess, protocol: str) -> None:
    fill = range(64)  # run one by one, milliseconds each
    timed, later = 64, range(65, 68)  # 64 asks for a 1 ms queue timeout behind them; 65-67 come after it
    for model in ("reject", "delay"):
        calls = Calls(server)
        for tag in fill:
            calls.send(tag, "grpc", model)
        wait_for(lambda c=calls: len(c.ended) >= 1, "the first request was never answered")
        calls.send(timed, protocol, model, timeout=1000)
        sender = threading.Timer(0.01, lambda m=model, c=calls: [c.send(t, "grpc", m) for t in later])
        sender.start()
        calls.wait([timed])
        sender.join()
        calls.wait([*fill, *later])
        calls.close()
        order, result = calls.order(), calls.ended[timed][1]
        if model == "reject":
            assert any(order.index(i) > order.index(timed) for i in fill), f"{timed} never queued: {order}"
            assert isinstance(result, InferenceServerException), result
            assert "Request timeout expired" in str(result)
            assert result.status() in ("StatusCode.UNAVAILABLE", "503")
        else:  # served, after the requests that came later but had not timed out
            assert isinstance(result, np.ndarray)
            assert order.index(timed) > max(order.index(i) for i in later), order
        assert all(isinstance(r, np.ndarray) for t, (_, r) in calls.ended.items() if t != timed)


def test_bad_priority_and_timeout_get_a_clear_400(server: GrpcServerProcess) -> None:
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    g = grpcclient.InferenceServerClient(server.grpc_url)
    tensors = {"http": httpclient.InferInput("input", list(X.shape), "FP32"),
               "grpc": grpcclient.InferInput("input", list(X.shape), "FP32")}  # fmt: skip
    for tensor in tensors.values():
        tensor.set_data_from_numpy(X)
    cases = [
        ("prio", {"priority": 3}, "parameter 'priority' is 3; expected 0 (default level 2) or one of the levels 1..2"),
        ("reject", {"priority": 1}, "parameter 'priority' is 1; this model has no priority levels"),
        ("strict", {"timeout": 5}, "does not allow a request timeout (allow_timeout_override is false)"),
    ]
    for model, kw, message in cases:
        with pytest.raises(InferenceServerException, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
            http.infer(model, [tensors["http"]], **kw)
        assert e.value.status() == "400"
        with pytest.raises(InferenceServerException, match=r"priority|timeout") as e:
            g.infer(model, [tensors["grpc"]], **kw)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and message in str(e.value)
    # wrongly typed parameters, which tritonclient cannot send
    body = {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}
    for params, name in (
        ({"priority": "high"}, "priority"),
        ({"timeout": -1}, "timeout"),
        ({"priority": 1.5}, "priority"),
    ):
        r = httpx.post(f"{server.url}/v2/models/prio/infer", json={**body, "parameters": params}, timeout=30)
        assert r.status_code == 400 and f"parameter '{name}' must be a non-negative integer" in r.json()["error"]
    with grpc.insecure_channel(server.grpc_url) as channel:
        request = pb.ModelInferRequest(model_name="prio")
        request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
        request.raw_input_contents.append(X.tobytes())
        request.parameters["priority"].string_param = "high"
        with pytest.raises(grpc.RpcError) as info:
            GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "parameter 'priority' must be an int64 or uint64 parameter, got string_param" in info.value.details()


def batching(fields: str) -> Any:
    return text_format.Parse(fields, mc.ModelDynamicBatching())


def test_policy_levels_timeouts_and_config_errors() -> None:
    policy = QueuePolicy.from_config(
        batching(
            "priority_levels: 3 default_priority_level: 2 "
            "default_queue_policy { default_timeout_microseconds: 5000 allow_timeout_override: true } "
            "priority_queue_policy { key: 1 value { timeout_action: DELAY max_queue_size: 4 } }"
        ),
        Path("m/config.pbtxt"),
    )
    assert policy.ticket(None, None).level == 1 and policy.ticket(0, None).level == 1  # the default, 0-based
    assert policy.ticket(3, 2000).timeout_s == pytest.approx(0.002)
    assert policy.ticket(2, 9000).timeout_s == pytest.approx(0.005)  # never longer than the policy's
    top = policy.ticket(1, None)
    assert (top.level, top.delay, top.max_queue_size, top.timeout_s) == (0, True, 4, None)
    with pytest.raises(ApiError, match="allow_timeout_override is false"):
        policy.ticket(1, 10)
    with pytest.raises(QueuePolicyError, match=r"m/config\.pbtxt: dynamic_batching\.default_priority_level is 4"):
        QueuePolicy.from_config(batching("priority_levels: 3 default_priority_level: 4"), Path("m/config.pbtxt"))
    with pytest.raises(QueuePolicyError, match=r"priority_queue_policy has level 5; expected 1\.\.2"):
        QueuePolicy.from_config(
            batching("priority_levels: 2 priority_queue_policy { key: 5 value { } }"), Path("m/config.pbtxt")
        )


def test_config_is_tritons_model_config_over_http_and_grpc(server: GrpcServerProcess) -> None:
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    g = grpcclient.InferenceServerClient(server.grpc_url)
    doc = http.get_model_config("prio")
    assert doc["name"] == "prio" and doc["backend"] == "onnxruntime" and doc["max_batch_size"] == 1
    assert doc["dynamic_batching"]["priority_levels"] == 2 and doc["dynamic_batching"]["default_priority_level"] == 2
    assert doc["input"][0]["dims"] == list(SHAPE) and doc["input"][0]["data_type"] == "TYPE_FP32"
    assert doc["output"][0]["label_filename"] == "labels.txt"
    assert doc["parameters"]["execution_provider"]["string_value"] == "CPUExecutionProvider"
    strict = http.get_model_config("strict")["dynamic_batching"]["default_queue_policy"]
    assert strict == {"default_timeout_microseconds": 60_000_000}  # a number, as Triton writes it
    message = g.get_model_config("prio").config
    assert message.dynamic_batching.priority_levels == 2 and list(message.input[0].dims) == list(SHAPE)
    assert g.get_model_config("prio", as_json=True)["config"]["name"] == "prio"


def test_config_json_turns_every_64_bit_field_into_a_number() -> None:
    from service.model_config import config_json

    config = mc.ModelConfig(name="m", max_batch_size=4)
    text_format.Parse(
        "max_queue_delay_microseconds: 7 priority_levels: 2 "
        "priority_queue_policy { key: 1 value { default_timeout_microseconds: 9 } }",
        config.dynamic_batching,
    )
    config.input.add(name="x", dims=[3, 8])
    doc = config_json(config)
    assert doc["input"] == [{"name": "x", "dims": [3, 8]}]
    batching = doc["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 7 and batching["priority_levels"] == 2
    assert batching["priority_queue_policy"] == {"1": {"default_timeout_microseconds": 9}}
