"""Prometheus metrics, one registry per app (so several apps in one process, as in tests, never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests by model, version and outcome; request, queue and compute time; batch size; queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bnfold_requests",
            "Inference requests by model, version and outcome",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "bnfold_request_seconds",
            "Time from request to response",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "bnfold_queue_seconds",
            "Time a request waited for its batch",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "bnfold_compute_seconds",
            "ONNX Runtime time per batch",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "bnfold_batch_size", "Samples per executed batch", ["model", "version"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("bnfold_queue_depth", "Requests waiting", ["model", "version"], registry=r)

    def rejected(self, model: str, version: str) -> None:
        self.requests.labels(model, version, "rejected").inc()
