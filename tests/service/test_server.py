"""A real uvicorn process on loopback: the unmodified tritonclient, graceful SIGTERM, no torch in serving."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import ServerProcess, direct_logits
from tests.service.test_app import INFER, binary_request, json_request


def test_tritonclient_http_against_a_real_server(server: ServerProcess, model_repo: Path, digits_val: Any) -> None:
    import tritonclient.http as httpclient

    x = np.ascontiguousarray(digits_val[0][:4], np.float32)
    expected = direct_logits(model_repo / "digits" / "1" / "model.onnx", x)
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"][0]["name"] == "input" and meta["outputs"][0]["shape"] == [-1, 10]
    assert client.get_model_config("digits")["max_batch_size"] == 16

    for binary in (True, False):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer("digits", [inp], outputs=[out], request_id=f"req-{binary}")
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
        assert result.get_response()["id"] == f"req-{binary}"

    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("digits", [inp], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    top = result.as_numpy("logits")
    assert top.shape == (4, 3)
    for row, logits in zip(top, expected, strict=True):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(logits.argmax()) and label == index
        assert float(score) == pytest.approx(float(logits.max()), abs=1e-5)

    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    client.close()


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose model takes tens of milliseconds per sample, so a burst is still running at SIGTERM."""
    import torch

    from export import ExportJob, export_job
    from training.models import build_model

    repo = tmp_path_factory.mktemp("slow_repo")
    model = build_model("resnet", in_channels=3, depth=20, width=32, num_classes=4).eval()
    samples = torch.randn(2, 3, 96, 96).numpy()
    job = ExportJob("slow", model, (3, 96, 96), ["a", "b", "c", "d"], samples=samples)
    export_job(job, repo, max_batch_size=1, max_queue_delay_us=0)
    return repo


def test_sigterm_during_a_burst_loses_no_accepted_request(slow_repo: Path) -> None:
    srv = ServerProcess(slow_repo)
    try:
        srv.wait_ready()
        x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
        body, headers = binary_request(x)
        results: list[tuple[Any, float]] = []  # (status or error, time it completed)

        def one() -> None:
            try:
                r = httpx.post(f"{srv.url}/v2/models/slow/infer", content=body, headers=headers, timeout=60)
                results.append((r.status_code, time.monotonic()))
            except httpx.HTTPError as exc:
                results.append((exc, time.monotonic()))

        threads = [threading.Thread(target=one) for _ in range(24)]
        for t in threads:
            t.start()
        # the model works through the queue one sample at a time: once the first answer is back, the rest of
        # the burst is waiting in the server
        deadline = time.monotonic() + 30
        while not results and time.monotonic() < deadline:
            time.sleep(0.005)
        assert srv.proc.poll() is None
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        assert srv.proc.wait(timeout=60) == 0, srv.output()  # a clean drain exits 0 (uvicorn alone: -15)
        assert len(results) == 24
        # a refused connection was never accepted; anything else that is not a 200 is a lost request
        lost = [r for r, _ in results if r != 200 and not isinstance(r, httpx.ConnectError)]
        assert not lost, lost
        finished_after_signal = sum(1 for r, t in results if r == 200 and t > signalled)
        assert finished_after_signal >= 5, f"only {finished_after_signal} requests were still in flight at SIGTERM"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/v2/health/live", timeout=2)
    finally:
        srv.stop()


def _keep_alive_client(port: int, body: bytes, headers: dict[str, str], outcomes: list[Any], stop: Any) -> None:
    """Requests back to back on ONE keep-alive connection, until the server answers one with
    ``Connection: close`` (then "closed") or ``stop``; anything else that is not a 200 is recorded as lost."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            try:
                conn.request("POST", INFER, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:  # sent on an open connection, never answered
                outcomes.append(repr(exc))
                return
            outcomes.append(response.status)
            if response.getheader("connection", "").lower() == "close":
                outcomes.append("closed")
                return
    finally:
        conn.close()


def test_sigterm_under_keep_alive_load_answers_every_request_and_exits_0(model_repo: Path, digits_val: Any) -> None:
    """Issue 10 defect 3: every request sent on a connection open at SIGTERM is answered, each connection is
    closed by the server after an answer (``Connection: close``), and the exit status is 0."""
    srv = ServerProcess(model_repo, "--drain-delay-s", "0.5")
    stop = threading.Event()
    try:
        srv.wait_ready()
        body, headers = binary_request(digits_val[0][:1])
        outcomes: list[list[Any]] = [[] for _ in range(8)]
        threads = [
            threading.Thread(target=_keep_alive_client, args=(srv.port, body, headers, outcomes[i], stop))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)
        answered_before = sum(o.count(200) for o in outcomes)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        assert srv.proc.wait(timeout=60) == 0, srv.output()
        for client in outcomes:
            assert client[-1] == "closed" and set(client[:-1]) == {200}, client[-5:]
        assert answered_before > 20, "no load before the signal"
    finally:
        stop.set()
        srv.stop()


def test_second_signal_stops_at_once(slow_repo: Path) -> None:
    srv = ServerProcess(slow_repo, "--drain-delay-s", "30")
    try:
        srv.wait_ready()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None, "the first signal must drain, not stop"
        assert httpx.get(f"{srv.url}/v2/health/ready", timeout=5).status_code == 503
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(timeout=10) == 1
        assert time.monotonic() - signalled < 5
    finally:
        srv.stop()


def test_readiness_turns_false_on_the_first_signal(model_repo: Path) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.server import DrainingServer
    from service.settings import Settings

    app = create_app(Settings(repository=model_repo))
    with TestClient(app) as c:
        assert c.get("/v2/health/ready").status_code == 200
        DrainingServer(uvicorn.Config(app), app.state.manager).handle_exit(signal.SIGTERM, None)
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/health/live").status_code == 200


def test_serving_never_imports_torch(model_repo: Path, digits_val: Any) -> None:
    png = Path(__file__).parent / "data" / "digit.png"
    code = f"""
import sys
from fastapi.testclient import TestClient
import service.cli, service.server
from service.app import create_app
from service.settings import Settings
with TestClient(create_app(Settings(repository={str(model_repo)!r}))) as c:
    r = c.post("{INFER}", content={json_request(digits_val[0][:1])!r})
    assert r.status_code == 200, r.text
    r = c.post("/v1/models/digits/classify", content=open({str(png)!r}, "rb").read(),
               headers={{"Content-Type": "image/png"}})
    assert r.status_code == 200, r.text
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m.startswith("training"))
assert not leaked, leaked
print("no torch")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no torch" in proc.stdout, proc.stderr


def test_server_refuses_to_start_without_models(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "empty")
    try:
        code = srv.proc.wait(timeout=60)
        out = srv.output()
    finally:
        srv.stop()
    assert code != 0
    assert "model repository" in out and "does not exist" in out and "run bnfold-export first" in out


def test_every_setting_has_its_flag() -> None:
    """Issue 11: "every setting is an environment variable or the matching flag"."""
    from service.cli import build_parser, settings_from
    from service.settings import Settings

    flags = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert flags == set(Settings.model_fields), set(Settings.model_fields) ^ flags
    s = settings_from(["--model-versions", "2", "--no-require-model", "--graceful-timeout-s", "5"])
    assert (s.model_versions, s.require_model, s.graceful_timeout_s) == (2, False, 5.0)
    assert settings_from(["--max-image-pixels", "1000"]).max_image_pixels == 1000


@pytest.mark.parametrize("grpc", [False, True])
def test_batches_may_run_on_the_loop_only_while_the_server_holds_one_client(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch, grpc: bool
) -> None:
    """serve() tells the batchers (ModelManager.may_run_inline) from uvicorn's own set of open connections
    and the gRPC inferences running (ModelManager.grpc_call), gRPC on or off."""
    from service import server as server_module
    from service.settings import Settings
    from tests.service.conftest import free_port

    seen: list[bool] = []

    def run(self: Any, sockets: Any = None) -> None:  # instead of serving: look, as a batcher would
        connections, manager = self.server_state.connections, self.manager
        seen.append(manager.may_run_inline())  # nobody
        with manager.grpc_call():
            seen.append(manager.may_run_inline())  # one gRPC inference
            connections.add(object())
            seen.append(manager.may_run_inline())  # and an HTTP connection
        seen.append(manager.may_run_inline())  # one HTTP connection
        connections.add(object())
        seen.append(manager.may_run_inline())  # two
        self.started = True

    monkeypatch.setattr(server_module.DrainingServer, "run", run)
    settings = Settings(repository=model_repo, grpc_port=free_port() if grpc else 0)
    assert server_module.serve(settings) == 0
    assert seen == [True, True, False, True, False]


def test_with_workers_the_sole_client_is_counted_across_every_worker() -> None:
    """A worker holding one connection is not alone while another worker holds a connection or runs a gRPC
    inference: the lone-request session would then run beside that worker's own session on the same cores."""
    from types import SimpleNamespace

    from service.server import sole_client
    from service.workers.cluster import Cluster, Shared

    def workers(connections: list[int], grpc_calls: list[int]) -> Cluster:
        return Cluster(0, Shared([1, 1], SimpleNamespace(value=0), connections, grpc_calls), None, None)

    one, quiet = SimpleNamespace(connections={object()}), SimpleNamespace(grpc_calls=0)
    assert sole_client(one, quiet, None)  # type: ignore[arg-type]
    assert sole_client(one, quiet, workers([1, 0], [0, 0]))  # type: ignore[arg-type]
    assert not sole_client(one, quiet, workers([1, 1], [0, 0]))  # type: ignore[arg-type]
    assert not sole_client(one, quiet, workers([1, 0], [0, 1]))  # type: ignore[arg-type]
    assert not sole_client(one, SimpleNamespace(grpc_calls=1), None)  # type: ignore[arg-type]
    two = SimpleNamespace(connections={object(), object()})
    assert not sole_client(two, quiet, workers([1, 0], [0, 0]))  # type: ignore[arg-type]
