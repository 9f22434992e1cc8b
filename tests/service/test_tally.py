"""service.tally: per-request metric updates merged within one step of the event loop, the same totals."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from service.metrics import LATENCY_BUCKETS
from service.tally import Tally


class Recorder:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def inc(self, amount: float = 1.0) -> None:
        self.calls.append(amount)


def test_updates_in_one_step_are_written_once_at_its_end() -> None:
    async def scenario() -> tuple[list[float], list[float]]:
        tally, child = Tally(), Recorder()
        for _ in range(8):
            tally.inc(child)
        tally.inc(child, 2.5)
        during = list(child.calls)
        await asyncio.sleep(0)
        tally.inc(child)  # a later step writes again
        await asyncio.sleep(0)
        return during, child.calls

    during, after = asyncio.run(scenario())
    assert during == [] and after == [10.5, 1.0]


def test_a_gauge_takes_the_last_value_set_in_a_step_at_its_end() -> None:
    class Gauge:
        def __init__(self) -> None:
            self.values: list[float] = []

        def set(self, value: float) -> None:
            self.values.append(value)

    async def scenario() -> tuple[list[float], list[float]]:
        tally, gauge = Tally(), Gauge()
        tally.set(gauge, 1.0)
        tally.set(gauge, 3.0)
        during = list(gauge.values)
        await asyncio.sleep(0)
        return during, gauge.values

    assert asyncio.run(scenario()) == ([], [3.0])


def test_outside_an_event_loop_an_update_is_written_at_once() -> None:
    tally, child = Tally(), Recorder()
    tally.inc(child, 3)
    assert child.calls == [3]


def test_histograms_and_counters_through_the_tally_expose_what_direct_updates_do() -> None:
    values = [0.0, 0.0005, 0.0007, 0.001, 0.0042, 0.05, 31.0, 0.2, 0.2, 1e-9]  # on, between and past the bounds

    def series(through_tally: bool) -> bytes:
        registry = CollectorRegistry()
        hist = Histogram("t_seconds", "t", ["m"], buckets=LATENCY_BUCKETS, registry=registry).labels("a")
        count = Counter("t_requests", "t", ["m"], registry=registry).labels("a")
        if not through_tally:
            for v in values:
                hist.observe(v)
                count.inc()
            return generate_latest(registry)

        async def scenario() -> None:
            tally = Tally()
            for v in values:
                tally.observe(hist, v)
                tally.inc(count)
            await asyncio.sleep(0)

        asyncio.run(scenario())
        return generate_latest(registry)

    direct = [line for line in series(False).splitlines() if not line.startswith(b"t_requests_created")]
    tallied = [line for line in series(True).splitlines() if not line.startswith(b"t_requests_created")]
    strip = [line for line in direct if b"_created" not in line]
    assert strip == [line for line in tallied if b"_created" not in line]
    assert b't_seconds_count{m="a"} 10.0' in b"\n".join(tallied)
