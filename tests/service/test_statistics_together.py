"""``answered_together``: a batch's requests recorded at once read back exactly as one call per request."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.statistics import BatchTimes, StatisticsMetrics, read_statistics
from service.tally import Tally


def test_a_batch_recorded_together_reads_as_its_requests_one_by_one() -> None:
    times = BatchTimes(10, 100, 1)
    one_by_one, together = CollectorRegistry(), CollectorRegistry()
    each = StatisticsMetrics(one_by_one).version("m", "1", Tally())
    for queue_ns in (5, 7, 11):
        each.answered(queue_ns, times)
    StatisticsMetrics(together).version("m", "1", Tally()).answered_together(3, 5 + 7 + 11, times)
    expected = read_statistics(one_by_one, [("m", "1")])
    assert read_statistics(together, [("m", "1")]) == expected
    stats = expected["model_stats"][0]["inference_stats"]
    assert stats["queue"] == {"count": 3, "ns": 23}
    assert stats["compute_infer"] == {"count": 3, "ns": 300}
