"""Prometheus metrics, one registry per app (so several apps in one process, as in tests, never clash).

With several workers (``BNFOLD_WORKERS``) prometheus_client runs in its multiprocess mode: the supervisor
sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts the workers, every worker's values are written to files
there, and :func:`collecting_registry` (what ``/metrics`` collects) sums them over every worker, so a counter
equals the requests the server took whichever worker took them. A metric aggregates when it is declared with
``registry=metrics.registry`` like those below (the multiprocess files are written whatever the registry),
and a Gauge also says how workers combine: ``multiprocess_mode="livesum"`` (summed over live workers) or
``"livemax"``; counters and histograms are summed, dead workers included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from service.statistics import StatisticsMetrics, VersionStatistics
from service.tally import Tally

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OUTCOMES = ("success", "bad_request", "rejected", "timeout", "cancelled", "error")


@dataclass(frozen=True)
class VersionMetrics:
    """One model version's metric children, bound once: ``labels(...)`` takes a lock and a dict lookup, too
    much to repeat several times per request on the hot path."""

    outcomes: dict[str, Any]
    request_seconds: Any
    queue_seconds: Any
    compute_seconds: Any
    batch_size: Any
    queue_depth: Any
    stats: VersionStatistics  # Triton's statistics extension (service.statistics)
    tally: Tally  # per-request updates, written once per step of the event loop (service.tally)

    def count(self, outcome: str) -> None:
        """One request ended with ``outcome`` (one of :data:`OUTCOMES`)."""
        self.outcomes[outcome].inc()

    def succeeded(self, ns: int) -> None:
        """One request answered in ``ns`` nanoseconds: its outcome, request time and Triton's success
        statistics, through the tally."""
        tally, stats = self.tally, self.stats
        tally.inc(self.outcomes["success"])
        tally.observe(self.request_seconds, ns / 1e9)
        tally.inc(stats.requests["success"])
        tally.inc(stats.nanoseconds["success"], ns)

    def depth(self, requests: int) -> None:
        """``requests`` wait in the queue now (the gauge is written at the end of the step, through the
        tally: with several workers a gauge write is a locked mmap write, once per arrival under load)."""
        self.tally.set(self.queue_depth, requests)

    def queued(self, seconds: float) -> None:
        """One request waited ``seconds`` for its batch (through the tally)."""
        self.tally.observe(self.queue_seconds, seconds)


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
        per_version = ["model", "version"]

        def latency(name: str, documentation: str) -> Histogram:
            return Histogram(name, documentation, per_version, buckets=LATENCY_BUCKETS, registry=r)

        self.request_seconds = latency("bnfold_request_seconds", "Time from request to response")
        self.queue_seconds = latency("bnfold_queue_seconds", "Time a request waited for its batch")
        self.compute_seconds = latency("bnfold_compute_seconds", "ONNX Runtime time per batch")
        self.batch_size = Histogram(
            "bnfold_batch_size", "Samples per executed batch", per_version, buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "bnfold_queue_depth", "Requests waiting", per_version, registry=r, multiprocess_mode="livesum"
        )
        self.model_info = Gauge(
            "bnfold_model_info",
            "1 per loaded version: the execution provider, and the provider and session options in force",
            [*per_version, "provider", "provider_options", "session_options", "batch_buckets", "precision"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._collecting: CollectorRegistry | None = None
        self.statistics = StatisticsMetrics(r)
        self._versions: dict[tuple[str, str], VersionMetrics] = {}
        self.tally = Tally()

    def version(self, model: str, version: str) -> VersionMetrics:
        """The children of every per-version metric for ``model`` version ``version``."""
        key = (model, version)
        if key not in self._versions:
            self._versions[key] = VersionMetrics(
                outcomes={o: self.requests.labels(model, version, o) for o in OUTCOMES},
                request_seconds=self.request_seconds.labels(*key),
                queue_seconds=self.queue_seconds.labels(*key),
                compute_seconds=self.compute_seconds.labels(*key),
                batch_size=self.batch_size.labels(*key),
                queue_depth=self.queue_depth.labels(*key),
                stats=self.statistics.version(*key, self.tally),
                tally=self.tally,
            )
        return self._versions[key]


def collecting_registry(metrics: Metrics) -> CollectorRegistry:
    """The registry ``/metrics`` collects: with several workers one that sums every worker's files in
    ``PROMETHEUS_MULTIPROC_DIR`` (made once), else ``metrics.registry``."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return metrics.registry
    if metrics._collecting is None:
        metrics._collecting = CollectorRegistry()
        MultiProcessCollector(metrics._collecting, path=directory)
    return metrics._collecting
