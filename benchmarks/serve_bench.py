"""Serving benchmark: bnfold-serve against in-process ONNX Runtime on the same model, in the same run.

Measures, for a ResNet-20 (3x32x32, BN folded) exported by bnfold:
  1. in-process ONNX Runtime throughput at batch 1, 16 and its best batch;
  2. the server under 16 concurrent clients, 1 sample per request, binary v2 and JSON v2 (samples/s), and
     binary v2 over gRPC (tritonclient.grpc, raw tensor contents) against binary v2 over HTTP, interleaved;
  3. one client at a time: median latency of a binary request vs a direct ``session.run`` at batch 1, from a
     Python http.client and (with --loadgen wrk) from one wrk connection, interleaved with direct runs;
  4. server memory (RSS) over a sustained run: mean of the first minute vs the last minute.

With --int8 it also serves the model's int8 variant (issue 12) and measures fp32 against int8, interleaved:
in-process ONNX Runtime at batch 1/16/64 and single-client latency in three rounds, served binary v2 under 16
clients in eight pairs of short phases (see :func:`compare_int8`). With --tracing it starts a second server with
BNFOLD_TRACING on (exporting to a discarding OTLP receiver) and compares binary v2 throughput over HTTP and
gRPC, tracing off against on, in alternating pairs of phases (see :func:`compare_tracing`).

The load generator runs on the same machine (threads with keep-alive http.client connections), as in the
targets of issue 4. Usage:  .venv/bin/python benchmarks/serve_bench.py [--seconds 10] [--soak 130] [--int8] [--tracing]

With --workers 1,2 it compares worker counts instead (issue 19, see serve_workers.py): everything the issue
asks in one run of about 4 minutes:  .venv/bin/python benchmarks/serve_bench.py --workers 1,2 --seconds 10
Figures are printed as a table and written as JSON (--json PATH).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson


def build_repository(root: Path) -> Path:
    """Export a ResNet-20 (random weights, randomised BN statistics) into a model repository."""
    import torch

    from export import ExportJob, export_job
    from training.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet", depth=20, width=16, in_channels=3, num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    job = ExportJob("resnet20", model, (3, 32, 32), [str(i) for i in range(10)])
    export_job(job, root, max_batch_size=64, max_queue_delay_us=500)
    return root / "resnet20" / "1" / "model.onnx"


INT8_MODEL = "resnet20-int8"


def build_int8(root: Path, fp32_path: Path) -> tuple[Path, str]:
    """The ResNet-20's int8 variant (bnfold's ``quantize_int8``, its gate included) as model resnet20-int8.

    The benchmark's weights are random, so there is no real data: it is calibrated on 256 random inputs and
    verified (top-1 agreement with fp32, no labels) on 512 others. Returns the path and the gate's line.
    """
    from export.repository.writer import TensorSpec, new_version, render_config
    from export.variants.int8 import quantize_int8

    rng = np.random.default_rng(3)
    calibration = rng.standard_normal((256, 3, 32, 32), dtype=np.float32)
    validation = rng.standard_normal((512, 3, 32, 32), dtype=np.float32)
    config = render_config(
        INT8_MODEL,
        [TensorSpec("input", "float32", (3, 32, 32))],
        [TensorSpec("logits", "float32", (10,))],
        max_batch_size=64,
        max_queue_delay_us=500,
    )
    with new_version(root, INT8_MODEL, config, [str(i) for i in range(10)]) as (staging, _):
        report = quantize_int8(fp32_path, staging / "model.onnx", calibration, "minmax", validation, None)
    return root / INT8_MODEL / "1" / "model.onnx", report.gate_line()


def compare_int8(
    port: int, paths: dict[str, Path], seconds: float, wrk: bool, workdir: Path, rounds: int = 3, pairs: int = 8
) -> dict[str, Any]:
    """fp32 vs int8 in one run, so machine drift hits both alike.

    In-process ORT at batch 1/16/64 and single-client median latency (wrk's one connection, or http.client):
    ``rounds`` rounds, each measuring every figure for fp32 then int8 back to back. Served binary v2 under 16
    clients: ``pairs`` pairs of short phases (``seconds / 4``, at least 2 s), fp32 and int8 back to back, the
    order alternating between pairs, so no model always runs first. Ratios are per round or pair, with their
    median; the served ratio is also given as total int8 samples over total fp32 samples.
    """
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            row = figures[name]
            for b in (1, 16, 64):
                row.setdefault(f"ort_batch{b}", []).append(ort_throughput(path, b, seconds / 2))
            row.setdefault("ort_latency_ms", []).append(ort_latency(path, 1000) * 1e3)
            if wrk:
                latency = server_latency_wrk(port, max(seconds / 3, 2), workdir, model=name)
            else:
                latency = server_latency(port, 1000, model=name)
            row.setdefault("served_latency_ms", []).append(latency * 1e3)
    phase = max(2, int(seconds / 4))
    for i in range(pairs):
        for name in list(paths)[:: 1 if i % 2 == 0 else -1]:
            rate, errors = (
                load_wrk(port, True, 16, phase, workdir, model=name) if wrk else load(port, True, 16, phase, model=name)
            )
            figures[name].setdefault("served_binary", []).append(rate)
            figures[name].setdefault("errors", []).append(errors)
    out: dict[str, Any] = {n: {k: [round(v, 3) for v in vs] for k, vs in row.items()} for n, row in figures.items()}
    fp32, int8 = (figures[n] for n in paths)
    keys = ("served_binary", "ort_batch1", "ort_batch16", "ort_batch64", "served_latency_ms", "ort_latency_ms")
    ratios = {key: [round(b / a, 2) for a, b in zip(fp32[key], int8[key], strict=True)] for key in keys}
    out["int8_vs_fp32"] = ratios
    out["int8_vs_fp32_median"] = {key: statistics.median(r) for key, r in ratios.items()}
    out["served_binary_phase_s"] = phase
    out["served_binary_total_ratio"] = round(sum(int8["served_binary"]) / sum(fp32["served_binary"]), 3)
    return out


class DiscardingReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint on loopback that accepts every export and keeps nothing (so the traced server pays
    for building, batching and sending its spans, as with a real collector)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def start_server(repository: str, port: int, grpc_port: int, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "--repository", repository, "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "BNFOLD_GRPC_PORT": str(grpc_port), **env},
    )


def compare_tracing(repository: str, port: int, grpc_port: int, seconds: float, pairs: int = 4) -> dict[str, Any]:
    """The server without tracing (``port``, already running) against a second one with BNFOLD_TRACING on,
    exporting to a discarding OTLP receiver: binary v2 over HTTP and gRPC, 16 clients, ``pairs`` pairs of
    phases of ``seconds / 2`` (at least 2 s), the order alternating between pairs."""
    receiver = DiscardingReceiver()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    traced_port, traced_grpc = free_port(), free_port()
    traced = start_server(
        repository, traced_port, traced_grpc, BNFOLD_TRACING="true", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint
    )
    figures: dict[str, list[float]] = {}
    phase = max(2.0, seconds / 2)
    try:
        wait_ready(traced_port, traced)
        load(traced_port, True, 16, 2)  # warm-up
        servers = [("off", port, grpc_port), ("on", traced_port, traced_grpc)]
        for i in range(pairs):
            for name, http_port, g_port in servers[:: 1 if i % 2 == 0 else -1]:
                figures.setdefault(f"http_{name}", []).append(load(http_port, True, 16, phase)[0])
                figures.setdefault(f"grpc_{name}", []).append(load_grpc(g_port, 16, phase)[0])
    finally:
        traced.terminate()
        traced.wait(timeout=60)
        receiver.shutdown()
    out: dict[str, Any] = {k: [round(v) for v in vs] for k, vs in figures.items()}
    for proto in ("http", "grpc"):
        ratios = [on / off for off, on in zip(figures[f"{proto}_off"], figures[f"{proto}_on"], strict=True)]
        out[f"{proto}_on_vs_off_median"] = round(statistics.median(ratios), 3)
    out["phase_s"] = phase
    return out


def ort_throughput(path: Path, batch: int, seconds: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    for _ in range(5):
        session.run(None, {"input": x})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"input": x})
        n += batch
    return n / (time.perf_counter() - start)


def ort_latency(path: Path, count: int, threads: int = 0) -> float:
    """Median ``session.run`` time at batch 1; ``threads``: intra-op threads (0: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    times = []
    for _ in range(count):
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return statistics.median(times[count // 10 :])


def request_body(binary: bool) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    tensor: dict[str, Any] = {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32"}
    if not binary:
        tensor["data"] = x.ravel().tolist()
        return orjson.dumps({"inputs": [tensor]}), {}
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def run_threads(target: Callable[[int], None], clients: int) -> float:
    """Run ``target(i)`` for i < ``clients``, each in its own thread; the seconds until all have ended."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def load(port: int, binary: bool, clients: int, seconds: float, model: str = "resnet20") -> tuple[float, int]:
    """Samples/s over ``seconds`` with ``clients`` keep-alive connections; returns (rate, errors)."""
    body, headers = request_body(binary)
    counts = [0] * clients
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        while time.perf_counter() < stop:
            conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                counts[i] += 1
            else:
                errors[i] += 1
        conn.close()

    elapsed = run_threads(client, clients)  # before summing: the threads fill the counts
    return sum(counts) / elapsed, sum(errors)


def load_grpc(port: int, clients: int, seconds: float) -> tuple[float, int]:
    """As :func:`load`, over gRPC: one tritonclient.grpc client (its own channel) per thread, raw contents."""
    import tritonclient.grpc as grpcclient

    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    counts = [0] * clients
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        while time.perf_counter() < stop:
            try:
                c.infer("resnet20", [inp])
                counts[i] += 1
            except Exception:
                errors[i] += 1
        c.close()

    elapsed = run_threads(client, clients)  # before summing: the threads fill the counts
    return sum(counts) / elapsed, sum(errors)


def run_wrk(
    port: int, binary: bool, clients: int, seconds: float, workdir: Path, *flags: str, model: str = "resnet20"
) -> str:
    """wrk's report for ``clients`` keep-alive connections (one thread) sending one request body."""
    import shutil

    if shutil.which("wrk") is None:
        raise SystemExit("--loadgen wrk needs the wrk binary (Debian package 'wrk')")
    body, headers = request_body(binary)
    (workdir / "body.bin").write_bytes(body)
    lines = [
        'wrk.method = "POST"',
        f'local f = io.open("{workdir / "body.bin"}", "rb")',
        "wrk.body = f:read('*all')",
        "f:close()",
    ] + [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    (workdir / "post.lua").write_text("\n".join(lines) + "\n")
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    command = ["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", *flags, "-s", str(workdir / "post.lua"), url]
    return subprocess.run(command, capture_output=True, text=True).stdout


def load_wrk(
    port: int, binary: bool, clients: int, seconds: float, workdir: Path, model: str = "resnet20"
) -> tuple[float, int]:
    """The same load from wrk (C, one thread), which leaves more of the 2 cores to the server."""
    import re

    out = run_wrk(port, binary, clients, seconds, workdir, model=model)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, int(errors.group(1)) if errors else 0


def server_latency_wrk(port: int, seconds: float, workdir: Path, model: str = "resnet20") -> float:
    """Median latency (s) of one wrk connection sending binary requests back to back: the server's own
    latency, without a Python HTTP client's parsing in the figure."""
    import re

    out = run_wrk(port, True, 1, seconds, workdir, "--latency", model=model)
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    if m is None:
        raise SystemExit(f"cannot read wrk's median latency from:\n{out}")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


def server_latency(port: int, count: int, model: str = "resnet20") -> float:
    body, headers = request_body(True)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(count):
        t = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        conn.getresponse().read()
        times.append(time.perf_counter() - t)
    conn.close()
    return statistics.median(times[count // 10 :])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(port: int, pid: int, seconds: float) -> tuple[float, float, float]:
    """Binary load for ``seconds``, RSS sampled every second: (first-minute mean, last-minute mean, rate)."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sampler() -> None:
        start = time.perf_counter()
        while not done.is_set():
            samples.append((time.perf_counter() - start, rss_mb(pid)))
            time.sleep(1.0)

    t = threading.Thread(target=sampler)
    t.start()
    rate, _ = load(port, True, 16, seconds)
    done.set()
    t.join()
    window = min(60.0, seconds / 2)
    first = [m for s, m in samples if s < window]
    last = [m for s, m in samples if s >= seconds - window]
    return statistics.mean(first), statistics.mean(last), rate


def wait_ready(port: int, server: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Poll the server's readiness route until it answers 200; stop if the server exits or time runs out."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server was not ready after {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workers_section(args: argparse.Namespace, results: dict[str, Any], repo: Path, path: Path, best: float) -> int:
    """``--workers 1,2``: the worker counts side by side (serve_workers.py), with the in-process figures."""
    from serve_workers import compare_workers

    int8_path, results["int8_gate"] = build_int8(repo, path)
    results["ort_int8_vs_fp32_batch16"] = round(
        ort_throughput(int8_path, 16, args.seconds / 2) / ort_throughput(path, 16, args.seconds / 2), 3
    )
    counts = [int(w) for w in args.workers.split(",")]
    paths = {"resnet20": path, INT8_MODEL: int8_path}
    results["workers"] = compare_workers(counts, repo, paths, best, args.seconds, args.rounds)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput phase")
    p.add_argument("--soak", type=float, default=130.0, help="duration of the memory phase (0: skip)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--loadgen",
        choices=["python", "wrk"],
        default="python",
        help="who sends the 16-client load: Python threads (default) or wrk",
    )
    p.add_argument("--int8", action="store_true", help="also serve the int8 variant and compare it with fp32")
    p.add_argument(
        "--workers",
        help="instead of the sections above: compare these worker counts (e.g. 1,2), see serve_workers.py",
    )
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the --workers comparison")
    p.add_argument("--tracing", action="store_true", help="also compare throughput with tracing off and on")
    return p


def _throughput(args: argparse.Namespace, port: int, grpc_port: int, tmp: Path, results: dict[str, Any]) -> float:
    """16 clients, binary and JSON, then gRPC vs HTTP in three interleaved rounds; the binary rate."""
    load(port, True, 16, 2)  # warm-up
    if args.loadgen == "wrk":
        binary, err_b = load_wrk(port, True, 16, args.seconds, tmp)
        js, err_j = load_wrk(port, False, 16, args.seconds, tmp)
    else:
        binary, err_b = load(port, True, 16, args.seconds)
        js, err_j = load(port, False, 16, args.seconds)
    results["loadgen"] = args.loadgen
    results["server_binary_samples_per_s"] = round(binary)
    results["server_json_samples_per_s"] = round(js)
    results["errors"] = err_b + err_j
    # gRPC vs HTTP, binary v2, 16 Python clients each, in three interleaved rounds (machine drift hits both)
    rounds = [(load(port, True, 16, args.seconds / 3), load_grpc(grpc_port, 16, args.seconds / 3)) for _ in range(3)]
    results["grpc_vs_http_rounds_samples_per_s"] = [[round(h[0]), round(g[0])] for h, g in rounds]
    results["server_grpc_samples_per_s"] = round(statistics.median(g[0] for _, g in rounds))
    results["grpc_vs_http_binary"] = statistics.median(g[0] / h[0] for h, g in rounds)
    results["errors"] += sum(h[1] + g[1] for h, g in rounds)
    return binary


def _latency(args: argparse.Namespace, port: int, path: Path, tmp: Path, results: dict[str, Any]) -> None:
    results["server_latency_ms_batch1"] = server_latency(port, 2000) * 1e3
    results["latency_overhead_ms"] = results["server_latency_ms_batch1"] - results["ort_latency_ms_batch1"]
    if args.loadgen == "wrk":
        # three rounds of (direct session.run, wrk) back to back, so machine drift hits both alike
        rounds = [(ort_latency(path, 1000), server_latency_wrk(port, max(args.seconds / 3, 2), tmp)) for _ in range(3)]
        results["latency_rounds_ms_direct_vs_wrk"] = [[round(d * 1e3, 3), round(w * 1e3, 3)] for d, w in rounds]
        results["latency_overhead_ms_wrk"] = statistics.median((w - d) * 1e3 for d, w in rounds)


def _soak(args: argparse.Namespace, port: int, pid: int, results: dict[str, Any]) -> None:
    if args.soak:
        first, last, rate = soak(port, pid, args.soak)
        results["soak"] = {
            "seconds": args.soak,
            "rss_first_minute_mb": round(first, 1),
            "rss_last_minute_mb": round(last, 1),
            "samples_per_s": round(rate),
        }


def _served(args: argparse.Namespace, tmp: Path, path: Path, int8_path: Path | None, results: dict[str, Any]) -> None:
    """Every phase against one bnfold-serve process on loopback."""
    port, grpc_port = free_port(), free_port()
    server = start_server(str(tmp), port, grpc_port)
    try:
        wait_ready(port, server)
        binary = _throughput(args, port, grpc_port, tmp, results)
        results["binary_vs_best_ort"] = binary / max(results["ort_samples_per_s"].values())
        _latency(args, port, path, tmp, results)
        if int8_path is not None:
            load(port, True, 16, 2, model=INT8_MODEL)  # warm-up
            paths = {"resnet20": path, INT8_MODEL: int8_path}
            results["int8"] = compare_int8(port, paths, args.seconds, args.loadgen == "wrk", tmp)
        if args.tracing:
            results["tracing"] = compare_tracing(str(tmp), port, grpc_port, args.seconds)
        _soak(args, port, server.pid, results)
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> int:
    args = _parser().parse_args()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path, int8_path = build_repository(Path(tmp)), None
        if args.int8:
            int8_path, results["int8_gate"] = build_int8(Path(tmp), path)
        batches = {b: ort_throughput(path, b, args.seconds / 2) for b in (1, 4, 8, 16, 32, 64)}
        results["ort_samples_per_s"] = {str(b): round(v) for b, v in batches.items()}
        if args.workers:
            return workers_section(args, results, Path(tmp), path, max(batches.values()))
        results["ort_latency_ms_batch1"] = ort_latency(path, 2000) * 1e3
        _served(args, Path(tmp), path, int8_path, results)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
