"""Per-request and per-batch metric updates added up in Python and written once per step of the event loop.

With several workers every Prometheus value write is a locked write to a memory-mapped file (prometheus_client's
multiprocess mode); a request's own series (its outcome, request time, Triton's success statistics, its queue
time) cost about 13 us of a worker's CPU per request that way on the 2-core development machine. The requests
a batch answers all finish in the same step of the event loop, so :class:`Tally` adds their updates up in a
dict and writes each series once, in a callback scheduled for the end of that step (``loop.call_soon``): the
same totals, one write per series per step instead of one per request. Outside a running event loop an update
is written at once.

The callback also comes after the response: a lone request's batch runs, and its response is written
(:meth:`service.http_protocol.CoalescingTransport.write_now`), in the step that made its updates, so the
batch's own series (compute time, batch size, Triton's statistics: about twenty writes) no longer stand
between the run and the client. A gauge's :meth:`Tally.set` keeps the step's last value.

A histogram observation is added to the ``_sum`` and the bucket of the observed histogram child (what
``Histogram.observe`` itself does); a child without those attributes (another prometheus_client) is observed
as usual. Nothing is held past the step that made it: a worker's ``/metrics`` never misses a request that
worker answered. With several workers a scrape that another worker serves in the very microseconds between a
response leaving and the end of its step can miss that response's figures; the next scrape has them.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any


class Tally:
    """Counter increments and histogram observations, merged within one step of the event loop."""

    __slots__ = ("_adds", "_scheduled", "_sets")

    def __init__(self) -> None:
        self._adds: dict[Any, float] = {}  # a prometheus value (or counter child) -> what to add to it
        self._sets: dict[Any, float] = {}  # a gauge child -> the value it takes
        self._scheduled = False

    def inc(self, child: Any, amount: float = 1.0) -> None:
        """``child.inc(amount)``, written at the end of this step."""
        adds = self._adds
        adds[child] = adds.get(child, 0.0) + amount
        if not self._scheduled:
            self._schedule()

    def set(self, child: Any, value: float) -> None:
        """``child.set(value)`` for a gauge child, written at the end of this step (the last value set wins)."""
        self._sets[child] = value
        if not self._scheduled:
            self._schedule()

    def observe(self, child: Any, amount: float) -> None:
        """``child.observe(amount)`` for a histogram child, written at the end of this step."""
        bounds = getattr(child, "_upper_bounds", None)
        if bounds is None or not hasattr(child, "_buckets") or not hasattr(child, "_sum"):
            child.observe(amount)
            return
        index = bisect.bisect_left(bounds, amount)  # the first bound >= amount, as Histogram.observe finds it
        self.inc(child._sum, amount)
        if index < len(bounds):
            self.inc(child._buckets[index])

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: write now
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write everything added so far."""
        adds, self._adds = self._adds, {}
        sets, self._sets = self._sets, {}
        self._scheduled = False
        for child, amount in adds.items():
            child.inc(amount)
        for child, value in sets.items():
            child.set(value)
