"""Triton's statistics extension, recorded as Prometheus metrics and read back from the registry.

Every figure of ``GET /v2/models[/{m}[/versions/{v}]]/stats`` and gRPC ``ModelStatistics`` is a Prometheus
series, so the statistics are whatever the registry that ``/metrics`` collects says: with several worker
processes (prometheus_client's multiprocess mode) they add up across workers, exactly like ``/metrics``.

Recorded per model and version (``stat`` one of :data:`REQUEST_STATS`, nanoseconds as float counters,
exact up to 2**53 ns, about 104 days of summed time):

- ``bnfold_stats_requests_total{stat}`` / ``bnfold_stats_nanoseconds_total{stat}``: per request, as Triton
  counts them: ``success`` and ``fail`` (every request that was admitted and failed, cancelled ones
  included) with their whole duration; ``queue``, ``compute_input``, ``compute_infer`` and
  ``compute_output`` for each request answered by a batch (each request of a batch is charged the batch's
  compute times).
- ``bnfold_stats_inferences_total`` (samples run), ``bnfold_stats_executions_total`` (batches run),
  ``bnfold_stats_last_inference_ms`` (a Gauge that aggregates across processes with ``max``).
- ``bnfold_stats_batch_executions_total{batch_size}`` and ``bnfold_stats_batch_nanoseconds_total{batch_size,
  stat}`` (stat: ``compute_input``, ``compute_infer``, ``compute_output``): per batch size run.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.tally import Tally

REQUEST_STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
COMPUTE_STATS = ("compute_input", "compute_infer", "compute_output")
TRITON_ONLY_STATS = ("cache_hit", "cache_miss")  # Triton's fields that bnfold (no response cache) keeps at 0
PREFIX = "bnfold_stats_"


@dataclass(frozen=True)
class BatchTimes:
    """Nanoseconds one batch spent preparing its input, running, and splitting its output."""

    compute_input: int
    compute_infer: int
    compute_output: int


@dataclass
class VersionStatistics:
    """One model version's statistics series, bound once (``labels()`` is too slow for the hot path), written
    through a :class:`~service.tally.Tally` (at the end of the event loop's step, after the response)."""

    requests: dict[str, Any]
    nanoseconds: dict[str, Any]
    inferences: Any
    executions: Any
    last_inference: Any
    _batch: Any  # the family children per batch size come from
    _batch_ns: Any
    _key: tuple[str, str]
    tally: Tally
    _sizes: dict[int, tuple[Any, dict[str, Any]]] = field(default_factory=dict)

    def request(self, stat: str, ns: int) -> None:
        """One request adds to ``stat`` (one of :data:`REQUEST_STATS`), taking ``ns`` nanoseconds."""
        self.tally.inc(self.requests[stat])
        self.tally.inc(self.nanoseconds[stat], ns)

    def answered(self, queue_ns: int, times: BatchTimes) -> None:
        """One request answered by a batch: its queue time, and the batch's compute times."""
        self.answered_together(1, queue_ns, times)

    def answered_together(self, requests: int, queue_ns: int, times: BatchTimes) -> None:
        """``requests`` requests answered by one batch, ``queue_ns`` their queue times summed: the same
        figures as :meth:`answered` once per request (each request is charged the batch's compute times),
        in eight counter updates per batch instead of eight per request (each one a locked write to a
        memory-mapped file with several workers)."""
        tally = self.tally
        for stat, ns in (
            ("queue", queue_ns),
            ("compute_input", times.compute_input * requests),
            ("compute_infer", times.compute_infer * requests),
            ("compute_output", times.compute_output * requests),
        ):
            tally.inc(self.requests[stat], requests)
            tally.inc(self.nanoseconds[stat], ns)

    def batch(self, size: int, times: BatchTimes) -> None:
        """One batch of ``size`` samples ran."""
        if size not in self._sizes:
            self._sizes[size] = (
                self._batch.labels(*self._key, str(size)),
                {s: self._batch_ns.labels(*self._key, str(size), s) for s in COMPUTE_STATS},
            )
        count, ns = self._sizes[size]
        tally = self.tally
        tally.inc(count)
        for stat in COMPUTE_STATS:
            tally.inc(ns[stat], getattr(times, stat))
        tally.inc(self.inferences, size)
        tally.inc(self.executions)
        tally.set(self.last_inference, time.time_ns() // 1_000_000)


class StatisticsMetrics:
    """The statistics series, registered on the registry that ``/metrics`` collects."""

    def __init__(self, registry: CollectorRegistry) -> None:
        per_version = ["model", "version"]
        r = registry
        per_stat = [*per_version, "stat"]
        self.requests = Counter(f"{PREFIX}requests", "Requests per inference_stats entry", per_stat, registry=r)
        self.nanoseconds = Counter(f"{PREFIX}nanoseconds", "Nanoseconds per inference_stats", per_stat, registry=r)
        self.inferences = Counter(f"{PREFIX}inferences", "Samples run (inference_count)", per_version, registry=r)
        self.executions = Counter(f"{PREFIX}executions", "Batches run (execution_count)", per_version, registry=r)
        self.last_inference = Gauge(
            f"{PREFIX}last_inference_ms",
            "When the last batch ended, in milliseconds since the epoch (last_inference)",
            per_version,
            registry=r,
            multiprocess_mode="max",
        )
        self.batch = Counter(
            f"{PREFIX}batch_executions", "Batches run per batch size", [*per_version, "batch_size"], registry=r
        )
        self.batch_ns = Counter(
            f"{PREFIX}batch_nanoseconds",
            "Compute nanoseconds per batch size and statistic",
            [*per_version, "batch_size", "stat"],
            registry=r,
        )

    def version(self, model: str, version: str, tally: Tally) -> VersionStatistics:
        """The bound series of ``model`` version ``version``, written through ``tally``."""
        key = (model, version)
        return VersionStatistics(
            requests={s: self.requests.labels(*key, s) for s in REQUEST_STATS},
            nanoseconds={s: self.nanoseconds.labels(*key, s) for s in REQUEST_STATS},
            inferences=self.inferences.labels(*key),
            executions=self.executions.labels(*key),
            last_inference=self.last_inference.labels(*key),
            _batch=self.batch,
            _batch_ns=self.batch_ns,
            _key=key,
            tally=tally,
        )


# ---- reading back ---------------------------------------------------------------------------------------------
def _duration(count: float = 0, ns: float = 0) -> dict[str, int]:
    return {"count": int(count), "ns": int(ns)}


def _empty(name: str, version: str) -> dict[str, Any]:
    """Triton's statistics of one version that has run nothing (the same keys as Triton 2.51 answers)."""
    return {
        "name": name,
        "version": version,
        "last_inference": 0,
        "inference_count": 0,
        "execution_count": 0,
        "inference_stats": {s: _duration() for s in (*REQUEST_STATS, *TRITON_ONLY_STATS)},
        "batch_stats": [],
        "memory_usage": [],
        "response_stats": {},
    }


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], list[tuple[str, dict[str, str], float]]]:
    """Every statistics sample in ``registry``, by (model, version): (series name, labels, value)."""
    found: dict[tuple[str, str], list[tuple[str, dict[str, str], float]]] = defaultdict(list)
    for family in registry.collect():
        if not family.name.startswith(PREFIX):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
            found[key].append((sample.name.removeprefix(PREFIX), sample.labels, sample.value))
    return found


def _fill(doc: dict[str, Any], samples: list[tuple[str, dict[str, str], float]]) -> None:
    batches: dict[int, dict[str, Any]] = {}
    for name, labels, value in samples:
        if name == "requests_total":
            doc["inference_stats"][labels["stat"]]["count"] += int(value)
        elif name == "nanoseconds_total":
            doc["inference_stats"][labels["stat"]]["ns"] += int(value)
        elif name == "inferences_total":
            doc["inference_count"] += int(value)
        elif name == "executions_total":
            doc["execution_count"] += int(value)
        elif name == "last_inference_ms":
            doc["last_inference"] = max(doc["last_inference"], int(value))
        elif name.startswith("batch_"):
            size = int(labels["batch_size"])
            entry = batches.setdefault(size, {"batch_size": size, **{s: _duration() for s in COMPUTE_STATS}})
            if name == "batch_executions_total":
                for stat in COMPUTE_STATS:
                    entry[stat]["count"] += int(value)
            else:
                entry[labels["stat"]]["ns"] += int(value)
    doc["batch_stats"] = [batches[size] for size in sorted(batches)]


def read_statistics(registry: CollectorRegistry, versions: list[tuple[str, str]]) -> dict[str, Any]:
    """Triton's ``{"model_stats": [...]}`` for ``versions`` ((model, version) pairs), from ``registry``."""
    samples = _samples(registry)
    stats = []
    for name, version in versions:
        doc = _empty(name, version)
        _fill(doc, samples.get((name, version), []))
        stats.append(doc)
    return {"model_stats": stats}
