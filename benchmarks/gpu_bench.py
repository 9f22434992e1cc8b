"""GPU benchmark: ONNX Runtime on CUDA, fp32 and fp16, in process and served, and the first request per batch size.

Measures, for the serving benchmark's ResNet-20 (3x32x32, BN folded) in fp32 and its fp16 variant (float32 at
the API), on the CUDA provider with bnfold's options:
  1. in-process ONNX Runtime throughput at batch 1, 2, 4, ..., 64 (samples/s);
  2. bnfold-serve on CUDA under 16 concurrent clients, one sample per binary v2 request (samples/s), for each
     worker count of --workers (default 1,2,4), with the GPU memory each server takes (nvidia-smi, MiB) and,
     with wrk installed, the near-zero-compute requests/s ceiling (serve_workers.py's ``tiny`` model);
  3. the latency of the first and the second request at each batch size, on a fresh server with batch buckets
     off and on (BNFOLD_BATCH_BUCKETS=off / auto): without buckets cuDNN's algorithm search runs on the first
     request of every new batch shape; with them every shape was warmed before readiness.

On a machine where CUDA is not usable (no GPU, or CUDA/cuDNN libraries missing) it says so and exits 0.
Usage:  .venv/bin/python benchmarks/gpu_bench.py [--seconds 5] [--workers 1,2,4] [--json PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
from serve_bench import build_repository, free_port, load, wait_ready

BATCHES = (1, 2, 4, 8, 16, 32, 64)
FIRST_REQUEST_BATCHES = (1, 3, 5, 8, 12, 16, 24, 32, 48, 64)
SAMPLE = (3, 32, 32)


def cuda_usable(path: Path | None = None) -> bool:
    """Whether ONNX Runtime really runs on CUDA here; probed on ``path`` or on a one-node graph."""
    from service.providers import cuda_usable as probe

    if path is not None:
        return probe(path)
    with tempfile.TemporaryDirectory() as tmp:
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
        onnx.save(onnx.helper.make_model(graph), str(Path(tmp) / "probe.onnx"))
        return probe(Path(tmp) / "probe.onnx")


def ort_throughput(
    path: Path, sample: tuple[int, ...], batches: tuple[int, ...] = BATCHES, seconds: float = 5.0
) -> dict[int, float]:
    """Samples/s of an in-process CUDA session (bnfold's default CUDA options) at each batch size."""
    import onnxruntime as ort

    from service.providers import CPU, CUDA, CudaOptions, session_options

    session = ort.InferenceSession(str(path), session_options(0), providers=[(CUDA, CudaOptions().to_ort()), CPU])
    rates = {}
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, *sample)).astype(np.float32)
        for _ in range(5):
            session.run(None, {"input": x})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {"input": x})
            n += batch
        rates[batch] = n / (time.perf_counter() - start)
    return rates


def build_fp16(root: Path) -> Path:
    """The ResNet-20's fp16 variant (float32 input and output) as model resnet20-fp16."""
    import torch

    from export import ExportJob, export_job
    from training.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet", depth=20, width=16, in_channels=3, num_classes=10).eval()
    job = ExportJob("resnet20", model, SAMPLE, [str(i) for i in range(10)])
    export_job(job, root, precision="float16", max_batch_size=64, max_queue_delay_us=500)
    return root / "resnet20-fp16" / "1" / "model.onnx"


class Server:
    """``python -m service`` on CUDA on a free port, with extra environment; waited for until ready."""

    def __init__(self, repo: Path, env: dict[str, str], workers: int = 1) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "service", "--repository", str(repo), "--port", str(self.port)]
        cmd += ["--workers", str(workers)]
        full_env = {**os.environ, "BNFOLD_PROVIDERS": "cuda", "BNFOLD_LOG_LEVEL": "warning", **env}
        self.proc = subprocess.Popen(cmd, env=full_env)
        wait_ready(self.port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def timed_request(port: int, model: str, rows: int) -> float:
    """Seconds for one binary v2 request of ``rows`` samples."""
    x = np.random.default_rng(rows).standard_normal((rows, *SAMPLE)).astype(np.float32)
    tensor = {
        "name": "input",
        "shape": [rows, *SAMPLE],
        "datatype": "FP32",
        "parameters": {"binary_data_size": x.nbytes},
    }
    header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    conn.request(
        "POST",
        f"/v2/models/{model}/infer",
        body=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise SystemExit(f"request of {rows} rows answered {response.status}")
    return elapsed


def gpu_memory_mib() -> float:
    """GPU memory in use on device 0 (nvidia-smi), or NaN without nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return float(out.split()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return float("nan")


def served(repo: Path, workers: int, seconds: float) -> dict[str, float]:
    """One server with ``workers`` workers: samples/s of fp32 and fp16 at 16 clients, its GPU memory, and
    (with wrk) the tiny model's requests/s at 64 connections."""
    import shutil

    from serve_workers import TINY, wrk

    before = gpu_memory_mib()
    server = Server(repo, {}, workers)
    out: dict[str, float] = {"gpu_memory_mib": round(gpu_memory_mib() - before)}
    try:
        load(server.port, True, 16, 2)  # warm-up
        for name, model in (("fp32", "resnet20"), ("fp16", "resnet20-fp16")):
            out[f"{name}_samples_per_s"] = round(load(server.port, True, 16, seconds, model=model)[0])
        if shutil.which("wrk"):
            out["tiny_requests_per_s"] = round(wrk(server.port, TINY, (4,), 64, seconds, repo)["rate"])
    finally:
        server.stop()
    return out


def first_requests(repo: Path, buckets: str) -> dict[str, list[float]]:
    """On a fresh server: first and second request latency (ms) at each batch size of resnet20."""
    server = Server(repo, {"BNFOLD_BATCH_BUCKETS": buckets})
    try:
        return {
            str(n): [round(timed_request(server.port, "resnet20", n) * 1e3, 2) for _ in range(2)]
            for n in FIRST_REQUEST_BATCHES
        }
    finally:
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput phase")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--workers", default="1,2,4", help="worker counts of the served phase (default 1,2,4)")
    args = p.parse_args()
    if not cuda_usable():
        print("CUDA is not usable on this machine (no GPU, or CUDA/cuDNN libraries missing): nothing to measure")
        return 0
    import onnxruntime as ort

    results: dict[str, Any] = {"onnxruntime": ort.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        paths = {"fp32": build_repository(repo), "fp16": build_fp16(repo)}
        results["ort_cuda_samples_per_s"] = {
            name: {str(b): round(r) for b, r in ort_throughput(path, SAMPLE, seconds=args.seconds / 2).items()}
            for name, path in paths.items()
        }
        from serve_workers import build_tiny

        build_tiny(repo)
        results["served_by_workers"] = {w: served(repo, int(w), args.seconds) for w in args.workers.split(",")}
        results["first_and_second_request_ms"] = {
            "buckets off": first_requests(repo, "off"),
            "buckets auto": first_requests(repo, "auto"),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
