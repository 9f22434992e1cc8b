"""OpenTelemetry tracing: off by default (``BNFOLD_TRACING``), exported over OTLP as the standard ``OTEL_*``
environment variables configure it (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``, headers,
``OTEL_SERVICE_NAME``, ``OTEL_BSP_*`` for the batch span processor, ...).

Spans per inference request:

- the request: the SDK's instrumentations, ``opentelemetry-instrumentation-asgi`` for HTTP and
  ``opentelemetry-instrumentation-grpc`` for gRPC; both continue an incoming W3C ``traceparent``;
- ``queue`` (enqueued -> its batch starts), ``batch`` (attributes ``bnfold.batch.size`` in samples and
  ``bnfold.batch.requests``) and ``compute`` (the ONNX Runtime run, a child of ``batch``): children of the
  request's span, recorded by the batcher with the times it measured (:func:`record_batch`), for every
  request the batch answered. With tracing off (``configure`` never turned it on in this process) a request
  costs the check of one module flag, not a look-up of the current span.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

logger = logging.getLogger(__name__)
TRACER = "bnfold.service"
_enabled = False  # configure() turned tracing on in this process


def configure(enabled: bool, exporter: Any = None) -> Any:
    """The process's tracer provider when ``enabled`` (OTLP exporter unless ``exporter`` is given), else None.

    It becomes the global provider, which the batcher's spans use.
    """
    global _enabled
    if not enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "bnfold"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    logger.info("OpenTelemetry tracing on (OTLP, configured by OTEL_* variables)")
    return provider


def current() -> otel_context.Context | None:
    """The current context when tracing is on and its span records (to parent a queued request's spans),
    else None."""
    if not _enabled:
        return None
    return otel_context.get_current() if trace.get_current_span().is_recording() else None


def record_batch(
    contexts: list[tuple[otel_context.Context, int]], timing: tuple[int, int, int, int], samples: int
) -> None:
    """``queue``, ``batch`` and ``compute`` spans under each request's context.

    ``contexts``: (context, enqueued perf_counter_ns) per traced request; ``timing``: perf_counter_ns when the
    batch started, the run began and ended, and the batch was answered.
    """
    offset = time.time_ns() - time.perf_counter_ns()  # perf_counter_ns -> ns since the epoch
    started, run_begin, run_end, answered = (t + offset for t in timing)
    tracer = trace.get_tracer(TRACER)
    attributes = {"bnfold.batch.size": samples, "bnfold.batch.requests": len(contexts)}
    for ctx, enqueued in contexts:
        tracer.start_span("queue", context=ctx, start_time=enqueued + offset).end(end_time=started)
        batch = tracer.start_span("batch", context=ctx, start_time=started, attributes=attributes)
        inner = trace.set_span_in_context(batch, ctx)
        tracer.start_span("compute", context=inner, start_time=run_begin).end(end_time=run_end)
        batch.end(end_time=answered)


def add_http_tracing(app: Any, provider: Any) -> None:
    """The request span of every HTTP request (outermost middleware: it wraps inference too)."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider, exclude_spans=["receive", "send"])


def grpc_interceptors(enabled: bool) -> list[Any]:
    """The gRPC server's interceptors: the request span of every RPC when tracing is on."""
    if not enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]
