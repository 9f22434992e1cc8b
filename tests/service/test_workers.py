"""``bnfold-serve --workers N``: one server from the outside (issue 19), with real processes on loopback."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.settings import Settings
from service.workers import WorkersError, resolve_workers, threads_per_worker
from tests.service.conftest import ServerProcess, free_port
from tests.service.test_app import INFER, binary_request

KEY = {"X-API-Key": "k"}


def worker_pids(srv: ServerProcess) -> list[int]:
    """The supervisor's worker processes (its children but multiprocessing's resource tracker)."""
    pid = srv.proc.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return sorted(c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())


def connections_per_worker(port: int, pids: list[int]) -> list[int]:
    """The established connections to ``port`` that each worker holds (its descriptors against
    /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in pids:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                held += os.readlink(fd) in inodes
        counts.append(held)
    return counts


def per_worker_counts(metrics_dir: Path, tmp_path: Path) -> dict[str, dict[str, float]]:
    """``bnfold_requests_total`` by version, from each worker's own counter file (not the sum)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for db in sorted(metrics_dir.glob("counter_*.db")):
        alone = tmp_path / db.stem
        alone.mkdir(parents=True, exist_ok=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for s in family.samples:
                if s.name == "bnfold_requests_total" and s.labels["outcome"] == "success":
                    counts[s.labels["version"]] = counts.get(s.labels["version"], 0) + s.value
        out[db.stem] = counts
    return out


def infer_new_connections(url: str, body: bytes, headers: dict[str, str], n: int) -> list[httpx.Response]:
    """``n`` requests, each on its own connection, 4 at a time (so the kernel spreads them over workers)."""
    results: list[httpx.Response] = []

    def one() -> None:
        for _ in range(n // 4):
            results.append(httpx.post(f"{url}{INFER}", content=body, headers=headers, timeout=30))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def success_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("bnfold_requests_total") and 'outcome="success"' in x)
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def two_workers(model_repo: Path, tmp_path: Path) -> Any:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    metrics_dir = tmp_path / "metrics"
    env = {"BNFOLD_API_KEY": "k", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    srv = ServerProcess(repo, "--workers", "2", "--grpc-port", str(free_port()), env=env)
    try:
        srv.wait_ready()
        yield srv, repo, metrics_dir
    finally:
        srv.stop()


def test_two_workers_answer_on_one_port_and_metrics_sum_over_them(
    two_workers: Any, digits_val: Any, tmp_path: Path
) -> None:
    srv, _, metrics_dir = two_workers
    assert len(worker_pids(srv)) == 2
    body, headers = binary_request(digits_val[0][:1])
    results = infer_new_connections(srv.url, body, headers, 40)
    assert [r.status_code for r in results] == [200] * 40
    served = per_worker_counts(metrics_dir, tmp_path)
    assert len(served) == 2 and all(c.get("1", 0) > 0 for c in served.values()), served  # both answered
    assert success_total(srv.url) == 40  # /metrics is the sum over the workers, whichever one answers

    import tritonclient.grpc as grpcclient

    grpc_port = srv.proc.args[srv.proc.args.index("--grpc-port") + 1]
    x = np.ascontiguousarray(digits_val[0][:1], np.float32)
    for _ in range(8):  # fresh channels: the kernel spreads them over the workers listening on the port
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("digits", [inp]).as_numpy("logits").shape == (1, 10)
        client.close()
    assert success_total(srv.url) == 48


def test_model_control_through_one_worker_reaches_every_worker(
    two_workers: Any, digits_val: Any, tmp_path: Path
) -> None:
    srv, repo, metrics_dir = two_workers
    body, headers = binary_request(digits_val[0][:1])
    shutil.copytree(repo / "digits" / "1", repo / "digits" / "2")
    assert httpx.post(f"{srv.url}/v2/repository/models/digits/load", headers=KEY, timeout=60).status_code == 200
    before = per_worker_counts(metrics_dir, tmp_path / "before")
    results = infer_new_connections(srv.url, body, headers, 40)
    assert {r.json()["model_version"] for r in results} == {"2"}  # no connection sees version 1 any more
    after = per_worker_counts(metrics_dir, tmp_path / "after")
    assert all(after[w].get("2", 0) > before.get(w, {}).get("2", 0) for w in after), after  # on both workers

    (repo / "digits" / "3").mkdir()
    (repo / "digits" / "3" / "model.onnx").write_bytes(b"not an onnx model")
    failed = httpx.post(f"{srv.url}/v2/repository/models/digits/load", headers=KEY, timeout=60)
    assert failed.status_code == 400 and "digits/3/model.onnx" in failed.json()["error"], failed.text
    results = infer_new_connections(srv.url, body, headers, 20)
    assert {r.json()["model_version"] for r in results} == {"2"}  # a failed load leaves all on the old one
    index = httpx.post(f"{srv.url}/v2/repository/index", headers=KEY, timeout=10).json()
    assert "last load failed" in index[0]["reason"]

    assert httpx.post(f"{srv.url}/v2/repository/models/digits/unload", headers=KEY, timeout=60).status_code == 200
    results = infer_new_connections(srv.url, body, headers, 20)
    assert {r.status_code for r in results} == {503}, {r.text for r in results}
    assert httpx.get(f"{srv.url}/v2/health/ready", timeout=5).status_code == 503


def test_kill_9_of_a_worker_is_survived_and_the_worker_replaced(two_workers: Any, digits_val: Any) -> None:
    srv, _, _ = two_workers
    body, headers = binary_request(digits_val[0][:1])
    old = worker_pids(srv)
    outcomes: list[Any] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                r = httpx.post(f"{srv.url}{INFER}", content=body, headers=headers, timeout=30)
                outcomes.append(r.status_code)
            except httpx.TransportError as exc:  # in flight on the killed worker: a clean connection error
                outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        os.kill(old[0], signal.SIGKILL)
        seen_503 = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code = httpx.get(f"{srv.url}/v2/health/ready", timeout=5).status_code
            seen_503 |= code == 503
            if seen_503 and code == 200:
                break
            time.sleep(0.05)
        assert seen_503, "readiness must be 503 while the dead worker is replaced"
        assert code == 200, "not ready again within 30 s"
        answered_while_down = outcomes.count(200)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    new = worker_pids(srv)
    assert len(new) == 2 and old[0] not in new and old[1] in new
    assert answered_while_down > 20
    failed = [o for o in outcomes if o != 200]
    assert all(o in ("RemoteProtocolError", "ReadError", "ConnectError") for o in failed), failed
    assert len(failed) <= 4, failed  # only those in flight on the dead worker
    assert srv.proc.poll() is None


def test_a_second_signal_stops_every_worker_at_once(model_repo: Path) -> None:
    srv = ServerProcess(model_repo, "--workers", "2", "--drain-delay-s", "30")
    try:
        srv.wait_ready()
        pids = worker_pids(srv)
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while httpx.get(f"{srv.url}/v2/health/ready", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "readiness still on after SIGTERM"
            time.sleep(0.01)
        assert srv.proc.poll() is None, "the first signal must drain, not stop"
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(timeout=15) == 1
        assert time.monotonic() - signalled < 10
        assert not any(Path(f"/proc/{p}").exists() for p in pids)  # no worker outlives the supervisor
    finally:
        srv.stop()


def _reconnecting_client(port: int, body: bytes, headers: dict[str, str], outcomes: list[Any]) -> None:
    """Back-to-back requests that open a new connection whenever the server closes one, until the server
    refuses connections; a request sent and never answered is recorded as lost (its repr)."""
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.connect()
        except ConnectionRefusedError:
            return
        try:
            while True:
                try:
                    conn.request("POST", INFER, body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    outcomes.append(repr(exc))
                    break
                outcomes.append(response.status)
                if response.getheader("connection", "").lower() == "close":
                    break
        finally:
            conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_under_reconnecting_load_beside_a_cpu_hog_loses_nothing(
    model_repo: Path, digits_val: Any, workers: str
) -> None:
    """Issue 19's defect: clients that reconnect after ``Connection: close`` while the machine is loaded;
    every request sent is answered, with one worker and with two, and the server exits 0."""
    import subprocess
    import sys

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    body, headers = binary_request(digits_val[0][:1])
    try:
        for _ in range(2):
            srv = ServerProcess(model_repo, "--workers", workers, "--drain-delay-s", "0.3")
            try:
                srv.wait_ready()
                outcomes: list[list[Any]] = [[] for _ in range(8)]
                args = [(srv.port, body, headers, outcomes[i]) for i in range(8)]
                threads = [threading.Thread(target=_reconnecting_client, args=a) for a in args]
                for t in threads:
                    t.start()
                time.sleep(0.5)
                srv.proc.send_signal(signal.SIGTERM)
                for t in threads:
                    t.join(timeout=60)
                assert srv.proc.wait(timeout=60) == 0, srv.output()
                lost = [o for client in outcomes for o in client if o != 200]
                assert not lost, lost
                assert sum(len(o) for o in outcomes) > 50, "no load before the signal"
            finally:
                srv.stop()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_workers_setting_is_checked_with_one_clear_line() -> None:
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match=r"BNFOLD_WORKERS \(--workers\) must be auto or a whole number >= 1"):
            Settings(workers=bad)
    with pytest.raises(WorkersError, match=r"BNFOLD_WORKERS=3 .* more than the 2 usable cores; expected at most 2"):
        resolve_workers(Settings(workers="3", providers="cpu"), cores=2)
    with pytest.raises(WorkersError, match=r"2 workers x 2 intra-op threads .* expected at most 1 workers"):
        resolve_workers(Settings(workers="2", providers="cpu", intra_op_threads=2), cores=2)
    assert resolve_workers(Settings(providers="cpu"), cores=2) == 2
    assert resolve_workers(Settings(providers="cpu"), cores=64) == 4
    assert threads_per_worker(Settings(), 4, cores=16) == 4
    assert threads_per_worker(Settings(), 1, cores=16) == 0  # one worker: ONNX Runtime's own default


def test_a_container_cpu_quota_caps_the_cores(tmp_path: Path) -> None:
    from service.workers import cgroup_cores

    (tmp_path / "limited").write_text("150000 100000\n")
    (tmp_path / "unlimited").write_text("max 100000\n")
    assert cgroup_cores(tmp_path / "limited") == 2
    assert cgroup_cores(tmp_path / "unlimited") is None
    assert cgroup_cores(tmp_path / "absent") is None


def test_cli_refuses_zero_workers_with_the_setting_named(model_repo: Path) -> None:
    srv = ServerProcess(model_repo, "--workers", "0")
    try:
        assert srv.proc.wait(timeout=30) == 2
        out = srv.output()
    finally:
        srv.stop()
    assert "BNFOLD_WORKERS (--workers) must be auto or a whole number >= 1, got '0'" in out


def test_a_taken_port_fails_the_start_with_one_line(model_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = ServerProcess(model_repo, "--workers", "2", "--grpc-port", str(free_port()), "--port", str(port))
        try:
            assert srv.proc.wait(timeout=30) == 3
            out = srv.output()
        finally:
            srv.stop()
    assert f"cannot listen on 127.0.0.1:{port} (BNFOLD_PORT): Address already in use" in out, out


def test_a_worker_that_cannot_start_stops_the_start_and_leaves_no_orphans(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "empty", "--workers", "2")
    try:
        time.sleep(1.0)
        children = worker_pids(srv) if srv.proc.poll() is None else []
        assert srv.proc.wait(timeout=60) == 3
        out = srv.output()
    finally:
        srv.stop()
    assert "does not exist; run bnfold-export first" in out
    # every worker's lines say which worker wrote them (the other worker may be stopped before it logs at all)
    worker_lines = [line for line in out.splitlines() if "uvicorn.error" in line]
    assert worker_lines and all(re.search(r"worker [01] \[\d+\]", line) for line in worker_lines), out
    assert "before the server was ready" in out and "BNFOLD_WORKERS=2" in out, out
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_readiness_needs_every_worker_and_no_drain() -> None:
    from service.workers.cluster import Shared

    shared = Shared([1, 1], type("Flag", (), {"value": 0})(), [0, 0], [0, 0])
    assert shared.all_ready()
    shared.ready[1] = 0  # one worker dead or still starting
    assert not shared.all_ready()
    shared.ready[1] = 1
    shared.draining.value = 1
    assert not shared.all_ready()


def test_repeated_crashes_stop_the_server_instead_of_a_restart_loop(caplog: pytest.LogCaptureFixture) -> None:
    from service.workers import supervisor as sup_module

    sup = sup_module.Supervisor(Settings(), 2, 1)
    restarted: list[int] = []
    drained: list[bool] = []
    sup._start = restarted.append  # type: ignore[method-assign]
    sup._drain = lambda: drained.append(True)  # type: ignore[method-assign]
    dead = type("Dead", (), {"slot": 1, "exit_code": -9, "process": type("P", (), {"pid": 1})()})()
    for _ in range(sup_module.MAX_CRASHES):
        sup._replace(dead)
    assert restarted == [1] * sup_module.MAX_CRASHES and not drained and not sup.forced
    sup._replace(dead)  # one more within the window: stop, do not restart
    assert restarted == [1] * sup_module.MAX_CRASHES and drained == [True] and sup.forced
    assert "stopping the server instead of restarting in a loop" in caplog.text


def test_the_readme_states_the_code_s_worker_rules() -> None:
    from service.workers import AUTO_CPU_MAX, AUTO_CUDA
    from service.workers.supervisor import CRASH_WINDOW_S, MAX_CRASHES

    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    assert f"more than {MAX_CRASHES} deaths within {CRASH_WINDOW_S:.0f} s stop the server" in readme
    assert f"`auto` (on CPU `min(cores, {AUTO_CPU_MAX})`, on CUDA `{AUTO_CUDA}`)" in readme
    assert (
        f"`auto` is `min(cores, {AUTO_CPU_MAX})` on CPU" in readme and f"on a GPU host `auto` is {AUTO_CUDA}" in readme
    )


def test_connections_opened_at_once_are_shared_by_the_workers(model_repo: Path) -> None:
    """Issue 19: left to the event loops, the worker that woke first took every queued connection (16/0 in 2 of
    5 rounds of 16 at once, and that worker then served at half the machine's pace); each now takes its share."""
    srv = ServerProcess(model_repo, "--workers", "2")
    try:
        srv.wait_ready()
        pids = worker_pids(srv)
        for _ in range(3):
            clients = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(16)]
            deadline = time.monotonic() + 10
            while sum(split := connections_per_worker(srv.port, pids)) < 16:
                assert time.monotonic() < deadline, split
                time.sleep(0.01)
            assert all(6 <= held <= 10 for held in split), split
            for client in clients:
                client.close()
            while sum(connections_per_worker(srv.port, pids)) > 0:
                assert time.monotonic() < deadline + 10, "connections left open"
                time.sleep(0.01)
        response = httpx.get(f"{srv.url}/v2/health/ready", timeout=5)  # and the server serves on
        assert response.status_code == 200
    finally:
        srv.stop()
