"""OpenTelemetry tracing against a real bnfold-serve process: its OTLP/HTTP exporter sends to an in-memory
receiver on loopback, and the unmodified tritonclient (HTTP and gRPC) sends the caller's W3C traceparent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.service.test_grpc import GrpcServerProcess, started
from tests.service.test_queue_policy import wait_for

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver that keeps every span in memory."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def of(self, trace_id: str) -> list[Any]:
        return [s for s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def server(model_repo: Path, receiver: Receiver) -> Iterator[GrpcServerProcess]:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    srv = started(
        model_repo, BNFOLD_TRACING="true", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="50"
    )
    yield srv
    srv.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_request_yields_request_queue_batch_and_compute_spans_under_the_callers_trace(
    server: GrpcServerProcess, receiver: Receiver, digits_val: Any, protocol: str
) -> None:
    trace_id = TRACE_ID[:-4] + {"http": "0001", "grpc": "0002"}[protocol]
    headers = {"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"}
    x = np.ascontiguousarray(digits_val[0][:2], np.float32)
    if protocol == "http":
        client: Any = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        tensor: Any = httpclient.InferInput("input", list(x.shape), "FP32")
    else:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    client.infer("digits", [tensor], headers=headers)
    names = {"queue", "batch", "compute"}
    wait_for(lambda: names <= {s.name for s in receiver.of(trace_id)}, "the spans never reached the receiver", 30)
    spans = receiver.of(trace_id)
    by_name = {s.name: s for s in spans}
    roots = [s for s in spans if s.parent_span_id.hex() == CALLER_SPAN]
    assert len(roots) == 1, [s.name for s in spans]  # the request span continues the caller's
    request = roots[0]
    assert by_name["queue"].parent_span_id == request.span_id == by_name["batch"].parent_span_id
    assert by_name["compute"].parent_span_id == by_name["batch"].span_id
    size = {a.key: a.value.int_value for a in by_name["batch"].attributes}["bnfold.batch.size"]
    assert size == 2
    assert request.start_time_unix_nano <= by_name["queue"].start_time_unix_nano
    assert by_name["batch"].start_time_unix_nano <= by_name["compute"].start_time_unix_nano
    assert by_name["compute"].end_time_unix_nano <= by_name["batch"].end_time_unix_nano <= request.end_time_unix_nano
