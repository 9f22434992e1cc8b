"""Dynamic batching for one model version: requests queue up, merge into one batch, and split back.

A worker task takes the first waiting request, then keeps taking requests until the batch holds
``max_batch_size`` samples or ``max_queue_delay`` has passed since it started collecting, runs the batch
off the event loop (ONNX Runtime releases the GIL) and hands each request exactly its own rows back. A
request is one array per model input (the same number of rows in each); a batch concatenates every input
along axis 0 together, and every output is split back by rows.
It stops waiting early when no other request is on its way: none is being decoded (``arriving``) and none is
expected back (``expected``). A client whose requests came within ``max_queue_delay`` of the answers to its
previous ones (``returned_after``: the slower of its last two returns, which the HTTP protocol measures on its
connection) is one that sends again as soon as it is answered; when a batch ends, the clients of that kind it
answered, and the requests queued then, are the requests expected, and the next batch waits (within the
delay) until it holds as many. Without that, 8 keep-alive clients under load on one worker settled into
alternate batches of 1 and 7 (38% of the batches ran one sample): the first client back found the batcher
idle and started a batch alone. Clients that do not come back at once (independent users, new connections,
gRPC) are never expected (though a request of theirs that comes while clients are expected back waits with
them, within the delay): a count of requests in play, tried first, could not tell the two apart and made
independent arrivals wait the whole delay (benchmarks/RESULTS.md, 2026-12-04, seventh session). A client
expected back is due within twice the queue delay of its batch's end, or ``EXPECTED_BACK_S`` if longer (its
answer leaves in the steps after the batch ends, and under full load the client's next request takes longer
than the delay to be read: bounded by the delay alone, a third of the batches at 16 connections ran one
sample again); after that, and when the batch has no room left for the smallest request such a client
sent, nobody is waited for.
A request that finds the batcher idle (no batch running, nothing queued, nobody else arriving or expected)
starts its own batch of one at once, without the round trip through the worker task; requests that arrive
while it runs queue up and form the next batch as usual. An arrival wakes the worker only while it is idle or
collecting: while a batch runs, the run's end wakes it once for everything queued meanwhile. When, in
addition, the server has no client but this request's (no other HTTP connection or gRPC inference:
``inline``, see
:meth:`service.manager.ModelManager.may_run_inline`), that batch runs on the event loop itself: no request can
be waiting for the loop meanwhile, and the two thread hops (to the ONNX Runtime thread and back), which are
most of a lone request's overhead, are saved; the model's lone-request session runs it when it has one (every
core, threads spinning between runs: :func:`service.model.lone_session_options`). Only once a run has taken at
most ``INLINE_MAX_RUN_S``, and while the last one did: a client that arrives meanwhile waits no longer than
that. Under load a worker holds several connections and every batch runs in the thread (running idle batchers'
batches on the loop whatever the connections cost 0.865x the int8 throughput at 16 clients,
benchmarks/RESULTS.md).
The queue holds one FIFO per priority level (:mod:`service.queues`): a batch takes the highest level's
requests first, so a high-priority request waits behind no low-priority one; each request's level and queue
timeout come from the model's queue policy and its parameters (:mod:`service.queue_policy`).
The queue is bounded: a full queue refuses at once (503 with Retry-After) instead of growing without
limit; a request that waits and runs longer than its timeout gets 504 and is skipped if still queued.

Lifecycle: a request holds an :class:`Admission` (a context manager) from before its body is decoded until
its answer. :meth:`Batcher.stop` closes admission first (later arrivals get :class:`Retired`, a 503 with
Retry-After; in a hot swap the manager already names the new version, so they never reach this batcher),
then waits for every admitted request to be answered, then stops the worker and its thread. No
request is left to wait for its timeout because of a stop, and nothing is submitted to a stopped thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service import tracing
from service.errors import ApiError, bad_request, unavailable
from service.metrics import VersionMetrics
from service.model import ModelVersion
from service.queue_policy import TIMED_OUT, Ticket
from service.queues import PriorityQueue
from service.statistics import BatchTimes

logger = logging.getLogger(__name__)
INLINE_MAX_RUN_S = 0.005  # a batch whose last run took longer always runs in the ONNX Runtime thread
EXPECTED_BACK_S = 0.01  # clients expected back are waited for no later than this after their batch ended (or 2 delays)
DEFAULT_TICKET = Ticket()


class Retired(ApiError):
    """The batcher no longer admits requests (its version was swapped out, unloaded, or the server stops)."""

    def __init__(self, model: str) -> None:
        super().__init__(503, f"model {model!r} is being replaced or unloaded; retry", {"Retry-After": "1"})


class Admission:
    """One request's hold on a batcher, from before decoding until its answer; :meth:`Batcher.stop` waits for
    every admission to end. Use as ``with batcher.admit() as admission: ... await admission.infer(x, t)``."""

    __slots__ = ("_batcher", "_decoding", "returned_after")

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._decoding = True  # counted in ``batcher.arriving`` until it queues
        self.returned_after: float | None = None  # how soon its client sends again after an answer (docstring)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_: object) -> None:
        self._arrived()
        self._batcher._release()

    def _arrived(self) -> None:
        if self._decoding:
            self._decoding = False
            self._batcher.arriving -= 1

    async def infer(
        self, x: tuple[np.ndarray, ...], timeout_s: float, ticket: Ticket = DEFAULT_TICKET
    ) -> list[np.ndarray]:
        """Queue ``x`` (n samples of each input) and wait for its outputs (n rows each); see
        :meth:`Batcher.infer`."""
        self._arrived()
        return await self._batcher._infer(x, timeout_s, ticket, self.returned_after)


@dataclass(eq=False)  # queued requests are told apart by identity
class _Pending:
    # not in the repr: deque.remove puts the repr of a request it does not hold in its ValueError, and printing
    # a tensor took milliseconds each time a client went away while its request ran
    x: tuple[np.ndarray, ...] = field(repr=False)  # one array per model input
    future: asyncio.Future[list[np.ndarray]] = field(repr=False)
    n: int  # samples (rows of each input)
    level: int = 0  # priority level, 0 first
    trace: Any = None  # the request's OpenTelemetry context when it is traced (service.tracing)
    enqueued: int = field(default_factory=time.perf_counter_ns)
    abandoned: bool = False
    returns: bool = False  # its client sends again as soon as it is answered (module docstring)


class Batcher:
    """Merges concurrent requests to one model version into batches."""

    def __init__(
        self,
        model: ModelVersion,
        max_queue_size: int,
        metrics: VersionMetrics,
        inline: Callable[[], bool] = lambda: False,
    ) -> None:
        self.model = model
        self._inline = inline  # may a lone request's batch run on the event loop now (see the module docstring)
        self._last_run_ns = 2**62  # how long the last batch ran (until one has: too long, the thread runs it)
        self.max_batch = model.max_batch_size
        self.max_delay = model.max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self.metrics = metrics
        self._items = PriorityQueue(len(model.queue_policy.levels))
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{model.name}-{model.version}")
        self._task: asyncio.Task[None] | None = None
        self.arriving = 0  # admitted requests still being decoded: they will reach this queue
        self._running = False  # a batch is being collected or run
        self._collecting = False  # the worker is collecting a batch: an arrival wakes it
        self.expected = 0  # requests expected when the last batch ended (module docstring)
        self._expected_n = 1  # the fewest samples an expected client sends: a batch with less room waits for none
        self._expected_until = 0.0  # perf_counter() by which a client expected back has come or will not
        self._admitted = 0  # requests holding an Admission
        self._closed = False  # admit() refuses: stop() has begun
        self._stopped = False  # the worker and its thread are gone
        self._drained = asyncio.Event()  # set when closed and no admission is left

    @property
    def depth(self) -> int:
        return len(self._items)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.model.name}")

    def admit(self) -> Admission:
        """Hold this batcher for one request (raises :class:`Retired` once :meth:`stop` has begun)."""
        if self._closed:
            raise Retired(self.model.name)
        self._admitted += 1
        self.arriving += 1
        return Admission(self)

    def _release(self) -> None:
        self._admitted -= 1
        if self._closed and self._admitted == 0:
            self._drained.set()

    async def infer(
        self,
        x: tuple[np.ndarray, ...],
        timeout_s: float,
        ticket: Ticket = DEFAULT_TICKET,
        returned_after: float | None = None,
    ) -> list[np.ndarray]:
        """Admit, queue ``x`` (n samples of each input) at ``ticket``'s priority level and wait for its outputs
        (n rows each, model order). ``returned_after``: how soon its client sends again after an answer
        (seconds), when known (see the module docstring).

        ``timeout_s`` bounds the wait and the run (504); ``ticket.timeout_s`` the time queued (the queue
        policy: REJECT answers 503 "Request timeout expired", DELAY queues it behind its level).
        Requests refused or timed out here are counted here (outcomes bad_request, rejected, timeout).
        """
        with self.admit() as admission:
            admission.returned_after = returned_after
            return await admission.infer(x, timeout_s, ticket)

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new requests, answer every admitted one (waiting at most ``grace_s``; then those still
        queued get 503), then stop the worker and its thread."""
        self._closed = True
        if self._admitted:
            try:
                await asyncio.wait_for(self._drained.wait(), grace_s)
            except TimeoutError:
                logger.warning(
                    "%s v%d: %d requests still open after %s s",
                    self.model.name,
                    self.model.version,
                    self._admitted,
                    grace_s,
                )
        self._shutdown()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._running:  # a batch whose requests all gave up may still be running
            await asyncio.sleep(0.005)
        self._executor.shutdown(wait=True)

    def abort(self) -> None:
        """Stop at once (second signal): refuse and fail every queued request, leave a running batch."""
        self._closed = True
        self._shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _shutdown(self) -> None:
        self._stopped = True
        while self._items:
            self._refuse_stopped(self._items.popleft())
        if self._task is not None:
            self._task.cancel()

    def _stopped_error(self) -> ApiError:
        return unavailable(f"model {self.model.name!r} stopped; retry", 1)

    def _refuse_stopped(self, item: _Pending) -> None:
        """Fail ``item`` (unless answered) because the batcher stopped before running it."""
        if not item.future.done():
            item.future.set_exception(self._stopped_error())

    def _refuse_full(self, ticket: Ticket) -> None:
        if len(self._items) >= self.max_queue_size:
            self.metrics.count("rejected")
            raise unavailable(f"model {self.model.name!r} queue is full ({self.max_queue_size} requests); retry", 1)
        if ticket.max_queue_size and self._items.level_size(ticket.level) >= ticket.max_queue_size:
            self.metrics.count("rejected")
            raise unavailable(
                f"Exceeds maximum queue size: model {self.model.name!r} priority level {ticket.level + 1} holds "
                f"{ticket.max_queue_size} requests (max_queue_size); retry",
                1,
            )

    async def _infer(
        self, x: tuple[np.ndarray, ...], timeout_s: float, ticket: Ticket, returned_after: float | None
    ) -> list[np.ndarray]:
        n = x[0].shape[0]
        if n > self.max_batch:
            self.metrics.count("bad_request")
            raise bad_request(
                f"request holds {n} samples; model {self.model.name!r} takes at most {self.max_batch} per request"
            )
        if self._stopped:
            self.metrics.count("rejected")
            raise self._stopped_error()
        self._refuse_full(ticket)
        loop = asyncio.get_running_loop()
        item = _Pending(x, loop.create_future(), n, ticket.level, tracing.current())
        item.returns = returned_after is not None and returned_after <= self.max_delay
        queue_timer = None
        if not self._running and not self._items and self.arriving == 0 and not self._expecting(2):
            self._start(loop, [item], n, self._last_run_ns <= INLINE_MAX_RUN_S * 1e9 and self._inline())
        else:
            self._items.append(item)
            self.metrics.depth(len(self._items))
            if self._collecting or not self._running:  # while a batch runs, its end wakes the worker
                self._wake.set()
            if ticket.timeout_s is not None:
                queue_timer = loop.call_later(ticket.timeout_s, self._queue_timeout, item, ticket.delay)
        timer = loop.call_later(timeout_s, self._expire, item, timeout_s)
        try:
            return await item.future
        finally:
            timer.cancel()
            if queue_timer is not None:
                queue_timer.cancel()
            if item.future.cancelled():  # the request went away (client disconnect, shutdown): drop it
                item.abandoned = True
                if self._items.remove(item):
                    self.metrics.depth(len(self._items))

    def _expecting(self, requests: int) -> bool:
        """Whether ``requests`` requests or more are expected now (module docstring): a client expected back
        that has not come by ``_expected_until`` is no longer waited for."""
        return self.expected >= requests and time.perf_counter() < self._expected_until

    def _waits_for_expected(self, batch: list[_Pending], samples: int) -> bool:
        """Whether the batch being collected waits for clients expected back: fewer requests than expected,
        room for the smallest of them, and still their time."""
        return self.max_batch - samples >= self._expected_n and self._expecting(len(batch) + 1)

    def _queue_timeout(self, item: _Pending, delay: bool) -> None:
        """The queue policy's timeout passed while ``item`` waits: DELAY moves it behind its level, REJECT fails
        it with Triton's error (a request already in a batch is not affected)."""
        if delay:
            self._items.delay(item)
        elif self._items.remove(item) and not item.future.done():
            item.abandoned = True
            self.metrics.count("timeout")
            self.metrics.depth(len(self._items))
            item.future.set_exception(unavailable(f"{TIMED_OUT} (model {self.model.name!r}, queue policy timeout)"))

    def _expire(self, item: _Pending, timeout_s: float) -> None:
        if not item.future.done():
            item.abandoned = True
            self._items.remove(item)
            self.metrics.count("timeout")
            item.future.set_exception(ApiError(504, f"request to {self.model.name!r} timed out after {timeout_s:g} s"))

    async def _next(self, timeout: float | None) -> _Pending | None:
        while not self._items:
            self._wake.clear()
            if timeout is None:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    return None
        return self._items.head()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._items or self._running:  # the batch that runs wakes us when it ends
                self._wake.clear()
                await self._wake.wait()
            self._running = self._collecting = True
            batch: list[_Pending] = []
            try:
                samples = await self._collect(batch)
            except asyncio.CancelledError:  # stopped while collecting (stop's grace ran out): answer what it holds
                self._running = self._collecting = False
                for item in batch:
                    self._refuse_stopped(item)
                raise
            self._collecting = False
            self.metrics.depth(len(self._items))
            if not batch:
                self._running = False
                continue
            self._start(loop, batch, samples)

    async def _collect(self, batch: list[_Pending]) -> int:
        """Move queued requests into ``batch`` (see the module docstring) until it is full, ``max_queue_delay``
        has passed, or nobody else is on the way; the samples it holds."""
        samples = 0
        deadline = time.perf_counter() + self.max_delay
        while samples < self.max_batch:
            remaining = deadline - time.perf_counter()
            if batch and not self.arriving:  # only clients expected back are awaited: no longer than they are due
                remaining = min(remaining, self._expected_until - time.perf_counter())
            head = self._items.head() if self._items else await self._next(max(remaining, 0) if batch else None)
            if head is None:
                break
            if head.abandoned:
                self._items.popleft()
                if not batch and not self._items:
                    break  # only requests that gave up were queued: back to idle, not a wait while "running"
                continue
            if samples + head.n > self.max_batch:
                break  # it starts the next batch
            batch.append(self._items.popleft())
            samples += head.n
            if not self._items and (
                remaining <= 0 or (self.arriving == 0 and not self._waits_for_expected(batch, samples))
            ):
                break
        return samples

    def _start(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], samples: int, inline: bool = False
    ) -> None:
        """Run ``batch`` in the ONNX Runtime thread (or, ``inline``, here on the event loop); when it ends,
        answer each request and wake the worker if requests queued meanwhile."""
        self._running = True
        started = time.perf_counter_ns()
        for item in batch:
            self.metrics.queued((started - item.enqueued) / 1e9)
        if len(batch) == 1:
            x = batch[0].x
        else:  # every input along axis 0, together
            x = tuple(np.concatenate([item.x[i] for item in batch]) for i in range(len(batch[0].x)))
        prepared = time.perf_counter_ns()

        def answer(
            out: list[np.ndarray] | None, exc: BaseException | None, begin: int, end: int
        ) -> None:  # on the loop
            self._running = False
            self._last_run_ns = end - begin
            returning = [item.n for item in batch if item.returns]
            self.expected = len(returning) + len(self._items)
            self._expected_n = min(returning, default=1)
            self._expected_until = time.perf_counter() + max(2 * self.max_delay, EXPECTED_BACK_S)
            if self._items:
                self._wake.set()
            self._answer(out, exc, batch, samples, (started, prepared, begin, end))

        if inline:
            begin = time.perf_counter_ns()
            try:
                out, exc = self.model.run(x, lone=True), None
            except Exception as error:  # handed to the request; KeyboardInterrupt and the like stop the loop
                out, exc = None, error
            answer(out, exc, begin, time.perf_counter_ns())
            return

        def work() -> None:  # in the ONNX Runtime thread; one hop back to the loop, no future chaining
            begin = time.perf_counter_ns()
            try:
                out, exc = self.model.run(x), None
            except BaseException as error:  # handed to the requests of this batch
                out, exc = None, error
            loop.call_soon_threadsafe(answer, out, exc, begin, time.perf_counter_ns())

        self._executor.submit(work)

    def _answer(
        self,
        out: list[np.ndarray] | None,
        exc: BaseException | None,
        batch: list[_Pending],
        samples: int,
        timing: tuple[int, int, int, int],
    ) -> None:
        """Hand each request its rows; ``timing``: when the batch started, its input was ready, and its run
        began and ended (perf_counter_ns)."""
        if out is None:  # a failing batch fails its requests, not the worker
            exc = exc or RuntimeError("the inference run returned nothing")
            logger.error("inference failed for %s version %d", self.model.name, self.model.version, exc_info=exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        started, prepared, begin, end = timing
        split = time.perf_counter_ns()
        metrics = self.metrics
        metrics.tally.observe(metrics.compute_seconds, (split - started) / 1e9)
        metrics.tally.observe(metrics.batch_size, samples)
        offset = 0
        answered = []
        for item in batch:
            n = item.n
            if not item.future.done():
                item.future.set_result([o[offset : offset + n] for o in out])
                answered.append(item)
            offset += n
        done = time.perf_counter_ns()
        times = BatchTimes(prepared - started, end - begin, done - split)
        stats = self.metrics.stats
        stats.batch(samples, times)
        if answered:
            stats.answered_together(len(answered), sum(started - item.enqueued for item in answered), times)
        traced = [(item.trace, item.enqueued) for item in answered if item.trace is not None]
        if traced:
            tracing.record_batch(traced, (started, begin, end, done), samples)
