"""``bnfold-serve`` (also ``python -m service``): run the inference server under uvicorn.

Flags override ``BNFOLD_*`` environment variables; every setting has its flag. With ``--workers`` above 1 a
supervisor runs that many worker processes on the same ports (:mod:`service.workers`). On SIGTERM or SIGINT
readiness turns false at once, every request received is answered, then the process exits 0; a second
signal stops it at once (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.errors import validation_problems
from service.settings import Settings


def _engine_flags(p: argparse.ArgumentParser) -> None:
    """Processes, threads and execution providers: how the models run."""
    p.add_argument("--providers", choices=["auto", "cpu", "cuda"], help="execution provider (default auto)")
    p.add_argument(
        "--workers",
        help="worker processes serving the same ports (BNFOLD_WORKERS): a number, or auto (default): "
        "min(cores, 4) on CPU, 2 on CUDA",
    )
    p.add_argument(
        "--intra-op-threads", type=int, help="ONNX Runtime threads per worker (default: the cores split across them)"
    )
    p.add_argument(
        "--intra-op-spinning",
        choices=["run", "always", "off"],
        help="ONNX Runtime threads spin for work while a run lasts (default run), also between runs, or never",
    )
    p.add_argument(
        "--lone-request-session",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on CPU, a second session per model, on every core with threads spinning between runs, runs a "
        "lone client's requests (default on; --no-lone-request-session saves its memory)",
    )
    p.add_argument("--grpc-port", type=int, help="gRPC (v2 GRPCInferenceService) port; 0: off (default 0)")
    p.add_argument("--cuda-device-id", type=int, help="GPU to run on (CUDA provider)")
    p.add_argument("--cuda-cudnn-conv-algo-search", choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT"])
    p.add_argument("--cuda-arena-extend-strategy", choices=["kNextPowerOfTwo", "kSameAsRequested"])
    p.add_argument("--cuda-gpu-mem-limit", type=int, help="bytes of GPU memory the CUDA arena may take")
    p.add_argument("--batch-buckets", help="auto (powers of two on CUDA, off on CPU), off, or a list like 1,2,4,8")


def _limit_flags(p: argparse.ArgumentParser) -> None:
    """Batching, limits, access and shutdown: how requests are admitted and answered."""
    p.add_argument("--model-versions", type=int, help="newest versions of each model to load (default 1)")
    p.add_argument("--max-batch-size", type=int, help="override config.pbtxt max_batch_size")
    p.add_argument("--max-queue-delay-ms", type=float, help="override the dynamic batching delay")
    p.add_argument("--max-queue-size", type=int, help="queued requests per model before 503 (default 512)")
    p.add_argument("--request-timeout-s", type=float, help="per-request timeout before 504 (default 30)")
    p.add_argument("--max-body-bytes", type=int, help="largest request body before 413 (default 64 MiB)")
    p.add_argument("--max-image-pixels", type=int, help="largest image (width x height) before 413 (default 50M)")
    p.add_argument(
        "--allow-non-finite",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept NaN/Inf inputs (default off; --no-allow-non-finite overrides BNFOLD_ALLOW_NON_FINITE)",
    )
    p.add_argument("--api-key", help="enable /v2/repository/* with this key (prefer BNFOLD_API_KEY)")
    p.add_argument(
        "--require-model",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse to start when no model can be loaded (default on; --no-require-model to start empty)",
    )
    p.add_argument("--drain-delay-s", type=float, help="readiness off this long after SIGTERM (default 1)")
    p.add_argument("--graceful-timeout-s", type=float, help="time to answer in-flight requests on SIGTERM (default 30)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bnfold-serve",
        description="Serve a bnfold model repository over the Open Inference Protocol (v2) with ONNX Runtime. "
        "Every flag can also be set as an environment variable BNFOLD_<NAME>.",
        epilog="example:\n  bnfold-serve --repository model_repository --port 8000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repository", type=Path, help="model repository root (BNFOLD_REPOSITORY)")
    p.add_argument("--host", help="listen address (BNFOLD_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (BNFOLD_PORT, default 8000)")
    _engine_flags(p)
    _limit_flags(p)
    p.add_argument(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenTelemetry spans per request, exported over OTLP as the OTEL_* variables configure it "
        "(BNFOLD_TRACING, default off; --no-tracing overrides it)",
    )
    p.add_argument(
        "--ui",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the read-only web page at / (default on; --no-ui removes its routes)",
    )
    return p


def settings_from(argv: list[str] | None) -> Settings:
    args = build_parser().parse_args(argv)
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**given)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from(argv)
    except ValidationError as exc:
        problems = validation_problems(exc)
        print(f"bnfold-serve: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    return run(settings)


def run(settings: Settings) -> int:
    """One process (one worker), or a supervisor and its workers (see :mod:`service.workers`)."""
    from service.workers import WorkersError, resolve_workers, threads_per_worker

    try:
        workers = resolve_workers(settings)
    except WorkersError as exc:
        print(f"bnfold-serve: error: {exc}", file=sys.stderr)
        return 2
    threads = threads_per_worker(settings, workers)
    if workers == 1:
        from service.server import serve

        return serve(settings)
    from service.workers.supervisor import Supervisor

    return Supervisor(settings, workers, threads).run()


if __name__ == "__main__":
    sys.exit(main())
