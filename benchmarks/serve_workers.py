"""Worker processes (issue 19): one server per worker count, side by side, interleaved, wrk as the load.

For each worker count (``serve_bench.py --workers 1,2``) one server serves the same repository: the
ResNet-20, its int8 variant and ``tiny``, a near-zero-compute model (one Add on 4 floats) whose requests/s
is the front end's ceiling. All servers run at once (idle ones cost nothing) and every round measures each
in turn, so machine drift hits all alike. Per round and server:

* in-process ONNX Runtime's best (batch 32 or 64) and binary v2 under 16 wrk connections, fp32 then int8
  (samples/s; 1 sample per request), and the served/in-process ratio of the round;
* the median latency of one wrk connection, against a direct ``session.run`` at batch 1 in the same round,
  with ONNX Runtime's default threads and with the intra-op threads of one of the server's workers (the cores
  split across the workers, as the server does);
* the tiny model under 64 wrk connections: requests/s (the front end's ceiling), and the server's CPU per
  request (:func:`server_cost`): its processes' user + system time over the phase minus the ONNX Runtime
  run time the server's own statistics recorded, divided by the requests answered; and its event-loop
  threads' CPU alone per request;
* the event-loop threads' CPU per request for binary v2 on the ResNet-20 under 16 connections (the fp32
  phase), where ONNX Runtime's compute (on other threads) is most of the CPU;
* what that cost allows int8 (:func:`int8_ceiling`): in-process ``session.run`` time per sample, fp32 and
  int8, at batch 8 (a worker's batch under 16 connections shared by two workers) on one intra-op thread (so
  time is CPU: what each of two workers runs), and the served int8/fp32 ratio the cores could give at most
  when each request also costs the loops' CPU;
* the front end's floor: uvicorn itself (``uvicorn --workers N``, uvloop and httptools, as bnfold's server
  runs) serving a raw ASGI app that reads each request's body and answers a fixed 40 bytes without looking at
  it (:data:`FLOOR_APP`), under the same 16 connections and ResNet-20 requests; its processes' CPU per
  request is what any server built on uvicorn pays before its own work. With it: the most int8/fp32 even
  that server could give (``int8_vs_fp32_ceiling_at_uvicorn_floor``: :func:`int8_ceiling` with the floor's
  CPU and wrk's per request as the cost beside the model), and the loop CPU per request that the issue's 1.8x
  would allow at most (``loop_us_allowed_for_1_8x``: (fp32 - 1.8 int8) / 0.8, before the load generator's
  share, ``wrk_cpu_us_per_request``, measured in the fp32 phase);
* errors: wrk's socket errors and non-2xx answers.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

TINY = "tiny"
Figures = dict[str, float]
TARGET_INT8_VS_FP32 = 1.8  # issue 19's figure
FLOOR_APP = """async def app(scope, receive, send):  # the front end's floor: read the body, answer 40 fixed bytes
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"x" * 40})
"""


def build_tiny(root: Path) -> None:
    """``tiny``: output = input + 1 on 4 floats, max batch 64."""
    import onnx
    from onnx import TensorProto, helper

    from export.repository.writer import TensorSpec, new_version, render_config

    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "one"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = [TensorSpec("input", "float32", (4,))], [TensorSpec("logits", "float32", (4,))]
    config = render_config(TINY, *spec, max_batch_size=64, max_queue_delay_us=0)
    with new_version(root, TINY, config, ["a", "b", "c", "d"]) as (staging, _):
        onnx.save(model, staging / "model.onnx")


def body(shape: tuple[int, ...]) -> tuple[bytes, dict[str, str]]:
    """A binary v2 request for one sample of ``shape``."""
    x = np.random.default_rng(2).standard_normal((1, *shape)).astype(np.float32)
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
    header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def wrk(port: int, model: str, shape: tuple[int, ...], clients: int, seconds: float, workdir: Path) -> dict[str, float]:
    """One wrk run (one thread): requests/s, requests, errors, the median latency (s) and wrk's own CPU per
    request (us)."""
    if shutil.which("wrk") is None:
        raise SystemExit("--workers needs the wrk binary (Debian package 'wrk')")
    data, headers = body(shape)
    name = f"{model}-{'x'.join(map(str, shape))}"
    (workdir / f"{name}.bin").write_bytes(data)
    lines = ['wrk.method = "POST"', f'local f = io.open("{workdir / name}.bin", "rb")', "wrk.body = f:read('*all')"]
    lines += ["f:close()"] + [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    (workdir / f"{name}.lua").write_text("\n".join(lines) + "\n")
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    cmd = [
        "wrk",
        "-t1",
        f"-c{clients}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        f"{workdir / name}.lua",
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's CPU: the one child waited for meanwhile
    wrk_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    if rate is None or total is None or p50 is None:
        raise SystemExit(f"cannot read wrk's report:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rate": float(rate.group(1)),
        "requests": float(total.group(1)),
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
        "p50_s": float(p50.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[p50.group(2)],
        "wrk_cpu_us": wrk_cpu / max(int(total.group(1)), 1) * 1e6,
    }


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of ``pid`` and its descendants (alive ones), from /proc: all their threads,
    and their main threads alone (each server process's event loop runs on its main thread)."""
    total = loops = 0.0
    pending = [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while pending:
        p = pending.pop()
        try:
            for path, into_loops in ((f"/proc/{p}/stat", False), (f"/proc/{p}/task/{p}/stat", True)):
                fields = Path(path).read_text().rsplit(")", 1)[1].split()
                seconds = (int(fields[11]) + int(fields[12])) / tick
                loops, total = (loops + seconds, total) if into_loops else (loops, total + seconds)
            pending += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total, loops


def compute_seconds(port: int) -> float:
    """ONNX Runtime's run time so far, summed over models and workers: the server's own
    ``bnfold_stats_batch_nanoseconds_total{stat="compute_infer"}`` series (each batch's ``session.run``)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found = re.findall(r'^bnfold_stats_batch_nanoseconds_total\{[^}]*stat="compute_infer"[^}]*\} (\S+)$', text, re.M)
    return sum(float(v) for v in found) / 1e9


def server_cost(
    port: int, pid: int, phase: Callable[[], dict[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """``phase()``'s figures, and the server's CPU microseconds per request over it:

    * ``cpu_us``: every thread of its processes, minus the ONNX Runtime run time its statistics recorded
      (``session.run``'s wall time: exact for a near-zero-compute model, an underestimate of the front end's
      cost when ONNX Runtime's threads wait for a core on a loaded machine);
    * ``loop_us``: its event-loop threads alone (HTTP, decoding, batching, metrics; ONNX Runtime runs on
      other threads), which a loaded machine does not skew.
    """
    (cpu, loops), compute = cpu_seconds(pid), compute_seconds(port)
    figures = phase()
    (cpu_end, loops_end), compute_end = cpu_seconds(pid), compute_seconds(port)
    requests = max(figures["requests"], 1)
    return figures, {
        "cpu_us": (cpu_end - cpu - (compute_end - compute)) / requests * 1e6,
        "loop_us": (loops_end - loops) / requests * 1e6,
    }


def per_sample_us(path: Path, batch: int, seconds: float) -> float:
    """In-process ``session.run`` time per sample (us) at ``batch`` on one intra-op thread, the best of the
    runs made in ``seconds`` after a warm-up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(3).standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    for _ in range(5):
        session.run(None, feed)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return best / batch * 1e6


def int8_ceiling(fp32_us: float, int8_us: float, loop_us: float) -> float:
    """The most served int8/fp32 that cores kept busy can give when each request costs ONNX Runtime
    ``fp32_us`` or ``int8_us`` and the server's event loops ``loop_us`` more, whatever the model:
    requests/s is cores / CPU per request, so the ratio is (fp32 + loop) / (int8 + loop). An upper bound: the
    load generator's CPU and the kernel's work for the client come on top of both."""
    return (fp32_us + loop_us) / (int8_us + loop_us)


def loop_us_allowed(fp32_us: float, int8_us: float, target: float = TARGET_INT8_VS_FP32) -> float:
    """The loop CPU per request at which :func:`int8_ceiling` equals ``target``: (fp32 - t int8) / (t - 1)."""
    return (fp32_us - target * int8_us) / (target - 1)


def start(repo: Path, workers: int, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service", "--repository", str(repo), "--port", str(port), "--workers", str(workers)]
    return subprocess.Popen([*cmd, "--log-level", "warning"])


def start_floor(workdir: Path, workers: int, port: int) -> subprocess.Popen[bytes]:
    """uvicorn with ``workers`` processes serving :data:`FLOOR_APP` (uvloop, httptools: bnfold's server's own)."""
    (workdir / "floor_app.py").write_text(FLOOR_APP)
    cmd = [sys.executable, "-m", "uvicorn", "floor_app:app", "--app-dir", str(workdir), "--port", str(port)]
    cmd += ["--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    return subprocess.Popen([*cmd, "--log-level", "warning"])


def floor_us(port: int, pid: int, phase: float, workdir: Path) -> tuple[float, float, float]:
    """Under 16 connections of ResNet-20 requests: the floor server's CPU per request (us, all its
    processes), wrk's, and wrk's errors."""
    cpu, _ = cpu_seconds(pid)
    figures = wrk(port, "resnet20", (3, 32, 32), 16, phase, workdir)
    cpu_end, _ = cpu_seconds(pid)
    return (cpu_end - cpu) / max(figures["requests"], 1) * 1e6, figures["wrk_cpu_us"], figures["errors"]


def one_round(
    port: int, pid: int, paths: dict[str, Path], phase: float, workdir: Path, threads: int, floor: tuple[int, int]
) -> dict[str, float]:
    """Every figure of one server, once (see the module docstring); ``threads``: its workers' intra-op threads
    (0: ONNX Runtime's default); ``floor``: the port and pid of the floor server with as many workers."""
    from serve_bench import INT8_MODEL, ort_latency, ort_throughput

    image = (3, 32, 32)
    best = max(ort_throughput(paths["resnet20"], b, phase / 2) for b in (32, 64))  # in-process, this round
    fp32, fp32_cost = server_cost(port, pid, lambda: wrk(port, "resnet20", image, 16, phase, workdir))
    int8 = wrk(port, INT8_MODEL, image, 16, phase, workdir)
    direct = ort_latency(paths["resnet20"], 1000)
    direct_same = ort_latency(paths["resnet20"], 1000, threads) if threads else direct
    single = wrk(port, "resnet20", image, 1, phase, workdir)
    tiny, tiny_cost = server_cost(port, pid, lambda: wrk(port, TINY, (4,), 64, phase, workdir))
    fp32_us, int8_us = (per_sample_us(paths[m], 8, phase / 4) for m in ("resnet20", INT8_MODEL))
    floor_cpu_us, floor_wrk_us, floor_errors = floor_us(*floor, phase, workdir)
    return {
        "ort_best_samples_per_s": best,
        "binary_16_clients": fp32["rate"],
        "binary_vs_best_ort": fp32["rate"] / best,
        "int8_binary_16_clients": int8["rate"],
        "int8_vs_fp32": int8["rate"] / fp32["rate"],
        "single_client_p50_ms": single["p50_s"] * 1e3,
        "direct_session_run_ms": direct * 1e3,
        "p50_overhead_ms": (single["p50_s"] - direct) * 1e3,
        "direct_session_run_worker_threads_ms": direct_same * 1e3,  # with the intra-op threads of one worker
        "p50_overhead_vs_worker_threads_ms": (single["p50_s"] - direct_same) * 1e3,
        "tiny_requests_per_s": tiny["rate"],
        "server_cpu_us_per_request": tiny_cost["cpu_us"],  # ONNX Runtime's compute excluded
        "server_loop_cpu_us_per_request": tiny_cost["loop_us"],
        "resnet20_server_loop_cpu_us_per_request": fp32_cost["loop_us"],  # binary v2, 16 clients
        "ort_fp32_us_per_sample_batch8": fp32_us,  # one intra-op thread
        "ort_int8_us_per_sample_batch8": int8_us,
        "ort_int8_vs_fp32_batch8": fp32_us / int8_us,
        "int8_vs_fp32_ceiling_at_this_loop_cost": int8_ceiling(fp32_us, int8_us, fp32_cost["loop_us"]),
        "wrk_cpu_us_per_request": fp32["wrk_cpu_us"],  # the load generator's share, fp32 phase
        "uvicorn_floor_cpu_us_per_request": floor_cpu_us,  # FLOOR_APP, as many workers, 16 connections
        "uvicorn_floor_wrk_cpu_us_per_request": floor_wrk_us,
        "int8_vs_fp32_ceiling_at_uvicorn_floor": int8_ceiling(fp32_us, int8_us, floor_cpu_us + floor_wrk_us),
        "loop_us_allowed_for_1_8x": loop_us_allowed(fp32_us, int8_us),
        "errors": fp32["errors"] + int8["errors"] + single["errors"] + tiny["errors"] + floor_errors,
    }


def compare_workers(
    counts: list[int], repo: Path, paths: dict[str, Path], ort_best: float, seconds: float, rounds: int = 2
) -> dict[str, Any]:
    """Every worker count's figures, ``rounds`` interleaved rounds, medians and ratios (module docstring)."""
    from serve_bench import free_port, load_wrk, wait_ready

    from service.workers import usable_cores

    build_tiny(repo)
    ports = {w: free_port() for w in counts}
    servers = {w: start(repo, w, ports[w]) for w in counts}
    floor_ports = {w: free_port() for w in counts}
    floors = {w: start_floor(repo, w, floor_ports[w]) for w in counts}
    figures: dict[int, list[dict[str, float]]] = {w: [] for w in counts}
    try:
        for w in counts:
            wait_ready(ports[w], servers[w], timeout=300)
            wait_ready(floor_ports[w], floors[w])  # the floor app answers every path
            load_wrk(ports[w], True, 16, 2, repo)  # warm-up
        for i in range(rounds):
            for w in counts[:: 1 if i % 2 == 0 else -1]:
                threads = 0 if w == 1 else max(1, usable_cores() // w)  # as the server splits them
                floor = floor_ports[w], floors[w].pid
                figures[w].append(
                    one_round(ports[w], servers[w].pid, paths, max(2.0, seconds / 2), repo, threads, floor)
                )
    finally:
        for process in [*servers.values(), *floors.values()]:
            process.terminate()
        for process in floors.values():
            process.wait(timeout=60)
        codes = {w: server.wait(timeout=120) for w, server in servers.items()}
    out: dict[str, Any] = {"rounds": rounds, "phase_s": max(2.0, seconds / 2), "exit_codes": codes}
    for w, rows in figures.items():
        median = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
        median["errors"] = sum(r["errors"] for r in rows)
        median["binary_vs_best_ort_of_the_whole_run"] = round(median["binary_16_clients"] / ort_best, 3)
        out[f"workers_{w}"] = {"median": median, "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rows]}
    first = out[f"workers_{counts[0]}"]["median"]["tiny_requests_per_s"]
    out["tiny_ceiling_growth"] = {
        w: round(out[f"workers_{w}"]["median"]["tiny_requests_per_s"] / first, 2) for w in counts
    }
    return out
