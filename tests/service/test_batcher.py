"""The Batcher on its own: an idle batcher starts a lone request at once, requests that arrive while a
batch runs form the next batch, every request gets exactly its own rows, and stop() waits for the run."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from service.batching import Batcher
from service.metrics import Metrics
from service.queue_policy import QueuePolicy


@dataclass
class FakeModel:
    """Doubles its input; each run blocks until the test releases it and records its batch size."""

    name: str = "fake"
    version: int = 1
    max_batch_size: int = 8
    max_queue_delay_us: int = 200_000
    batches: list[int] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    threads: list[int] = field(default_factory=list)  # the thread each run ran on
    before: Callable[[np.ndarray], None] | None = None  # called with the batch's input before each run
    lone: list[bool] = field(default_factory=list)  # whether each run asked for the lone-request session

    def run(self, x: tuple[np.ndarray, ...], lone: bool = False) -> list[np.ndarray]:
        self.threads.append(threading.get_ident())
        self.lone.append(lone)
        if self.before is not None:
            self.before(x[0])
        self.batches.append(x[0].shape[0])
        self.started.set()
        assert self.release.wait(5)
        return [x[0] * 2]


def _batcher(model: FakeModel, inline: Callable[[], bool] = lambda: False) -> Batcher:
    metrics = Metrics().version(model.name, str(model.version))
    return Batcher(model, max_queue_size=16, metrics=metrics, inline=inline)  # type: ignore[arg-type]


def test_lone_request_runs_at_once_and_arrivals_batch_behind_it() -> None:
    async def scenario() -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        model = FakeModel()
        batcher = _batcher(model)
        xs = [np.full((1, 2), i, np.float32) for i in range(5)]
        first = asyncio.create_task(batcher.infer((xs[0],), 10))
        # the lone request reaches the model by itself: the worker task is not even running yet
        assert await asyncio.to_thread(model.started.wait, 2), "the lone request did not start on its own"
        batcher.start()
        rest = [asyncio.create_task(batcher.infer((x,), 10)) for x in xs[1:]]
        for _ in range(1000):  # let the four tasks enqueue (each needs one turn of the loop): no timed sleep
            if batcher.depth == 4 or any(t.done() for t in rest):
                break
            await asyncio.sleep(0)
        assert batcher.depth == 4, "requests arriving during a run must queue for the next batch"
        model.release.set()
        outs = [(await first)[0]] + [(await t)[0] for t in rest]
        await batcher.stop()
        return model.batches, xs, outs

    batches, xs, outs = asyncio.run(scenario())
    assert batches == [1, 4]
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out, x * 2)


def test_stop_waits_for_a_running_batch() -> None:
    async def scenario() -> np.ndarray:
        model = FakeModel()
        batcher = _batcher(model)
        batcher.start()
        task = asyncio.create_task(batcher.infer((np.ones((2, 2), np.float32),), 10))
        assert await asyncio.to_thread(model.started.wait, 2)
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done(), "stop() returned while a batch was still running"
        model.release.set()
        await stopping
        return (await task)[0]

    np.testing.assert_array_equal(asyncio.run(scenario()), np.full((2, 2), 2, np.float32))


def test_a_failing_run_fails_its_requests_and_the_next_one_succeeds() -> None:
    class Flaky(FakeModel):
        def run(self, x: tuple[np.ndarray, ...], lone: bool = False) -> list[np.ndarray]:
            if not self.batches:
                self.batches.append(-1)
                raise RuntimeError("boom")
            return super().run(x, lone)

    async def scenario() -> tuple[str, np.ndarray]:
        model = Flaky()
        model.release.set()
        batcher = _batcher(model)
        batcher.start()
        try:
            await batcher.infer((np.ones((1, 2), np.float32),), 10)
            error = ""
        except RuntimeError as exc:
            error = str(exc)
        (out,) = await batcher.infer((np.ones((1, 2), np.float32),), 10)
        await batcher.stop()
        return error, out

    error, out = asyncio.run(scenario())
    assert error == "boom"
    np.testing.assert_array_equal(out, np.full((1, 2), 2, np.float32))


def test_stop_returns_when_every_queued_request_has_timed_out() -> None:
    """A queue that holds only requests that gave up must leave the worker idle, so stop() returns."""

    async def scenario() -> tuple[list[int], float]:
        model = FakeModel()
        batcher = _batcher(model)
        batcher.start()
        x = np.ones((1, 2), np.float32)
        running = asyncio.create_task(batcher.infer((x,), 10))  # occupies the model until released
        assert await asyncio.to_thread(model.started.wait, 2)
        queued = [asyncio.create_task(batcher.infer((x,), 0.05)) for _ in range(3)]  # they will give up first
        for task in queued:
            with contextlib.suppress(Exception):
                await task
        model.release.set()  # the worker now finds only abandoned requests in its queue
        await running
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(batcher.stop(), 5)
        return model.batches, loop.time() - started

    batches, seconds = asyncio.run(scenario())
    assert batches == [1] and seconds < 1


def test_a_queued_requests_repr_leaves_its_tensors_out() -> None:
    """deque.remove names a request it does not hold by its repr (a client gone while its batch runs): printing
    a 3x32x32 tensor there cost milliseconds of the event loop per disconnect."""
    from service.batching import _Pending

    async def scenario() -> str:
        x = np.arange(3 * 32 * 32, dtype=np.float32).reshape(1, 3, 32, 32)
        item = _Pending((x,), asyncio.get_running_loop().create_future(), 1)
        with contextlib.suppress(ValueError):
            collections.deque().remove(item)
        return repr(item)

    text = asyncio.run(scenario())
    assert "array" not in text and "3071" not in text and "n=1" in text


def test_a_lone_request_runs_on_the_event_loop_only_while_inline_is_allowed() -> None:
    """With the server holding only this request's connection the batch runs on the loop (no thread hops),
    on the lone-request session; otherwise in the ONNX Runtime thread on the worker's own session. Either way
    the answer is the same, and a failure reaches the request."""

    def refuse_negative(x: np.ndarray) -> None:
        if x[0, 0] < 0:
            raise ValueError("negative input")

    model = FakeModel(before=refuse_negative)
    model.release.set()

    async def scenario() -> tuple[int, list[np.ndarray], str]:
        alone = [True]
        batcher = _batcher(model, inline=lambda: alone[0])
        x = np.ones((1, 2), np.float32)
        outs = [(await batcher.infer((x,), 10))[0] for _ in range(2)]  # the first run's time is not known yet
        try:
            await batcher.infer((-x,), 10)
            failure = ""
        except ValueError as exc:
            failure = str(exc)
        alone[0] = False
        outs.append((await batcher.infer((x,), 10))[0])
        await batcher.stop()
        return threading.get_ident(), outs, failure

    loop_thread, outs, failure = asyncio.run(scenario())
    assert [t == loop_thread for t in model.threads] == [False, True, True, False]  # unknown, alone (twice), not
    assert model.lone == [False, True, True, False]
    assert failure == "negative input"
    for out in outs:
        np.testing.assert_array_equal(out, np.full((1, 2), 2, np.float32))


def test_a_batch_whose_last_run_was_long_runs_in_the_thread_even_when_alone() -> None:
    """A long run on the loop would hold back a connection that opens meanwhile: after a run longer than
    INLINE_MAX_RUN_S the next batch goes to the ONNX Runtime thread, and after a short one inline again. The
    first batch, whose time nobody knows, runs in the thread."""
    import time

    from service.batching import INLINE_MAX_RUN_S

    model = FakeModel()
    model.before = lambda x: time.sleep(2 * INLINE_MAX_RUN_S) if len(model.threads) == 2 else None
    model.release.set()

    async def scenario() -> int:
        batcher = _batcher(model, inline=lambda: True)
        for _ in range(4):
            await batcher.infer((np.ones((1, 2), np.float32),), 10)
        await batcher.stop()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert [t == loop_thread for t in model.threads] == [False, True, False, True]  # unknown, short, long, short


def test_a_batchs_metrics_are_written_after_its_answer_at_the_end_of_the_step() -> None:
    """The batch's own series (compute time, batch size, Triton's statistics) go through the tally: a lone
    request on the loop has its answer before any of them is written, and they are all there one step later."""
    model = FakeModel()
    model.release.set()
    metrics = Metrics()
    labels = {"model": model.name, "version": str(model.version)}

    def written() -> list[float | None]:
        sample = metrics.registry.get_sample_value
        return [
            sample("bnfold_batch_size_count", labels),
            sample("bnfold_compute_seconds_count", labels),
            sample("bnfold_stats_executions_total", labels),
            sample("bnfold_stats_requests_total", {**labels, "stat": "compute_infer"}),
            sample("bnfold_stats_last_inference_ms", labels),
        ]

    async def scenario() -> tuple[list[float | None], list[float | None], list[float | None]]:
        batcher = Batcher(model, 16, metrics.version(model.name, "1"), inline=lambda: True)  # type: ignore[arg-type]
        await batcher.infer((np.ones((1, 2), np.float32),), 10)  # the first run's time is unknown: the thread
        await asyncio.sleep(0)
        before = written()
        await batcher.infer((np.ones((1, 2), np.float32),), 10)  # on the loop, answered in this step
        during = written()
        await asyncio.sleep(0)
        after = written()
        await batcher.stop()
        return before, during, after

    before, during, after = asyncio.run(scenario())
    assert before[:4] == [1, 1, 1, 1] and before[4] is not None and before[4] > 0
    assert during == before  # answered, nothing of this batch written yet
    assert after[:4] == [2, 2, 2, 2]


def test_arrivals_during_a_run_do_not_wake_the_worker_the_runs_end_does() -> None:
    """A request that queues while a batch runs leaves the worker asleep (one wasted step of the event loop
    per request under load); the end of the run wakes it once, and the queued requests form one batch."""

    class CountingEvent(asyncio.Event):
        sets = 0

        def set(self) -> None:
            CountingEvent.sets += 1
            super().set()

    async def scenario() -> tuple[int, int, list[int]]:
        model = FakeModel()
        batcher = _batcher(model)
        batcher._wake = CountingEvent()
        batcher.start()
        first = asyncio.create_task(batcher.infer((np.ones((1, 2), np.float32),), 10))
        assert await asyncio.to_thread(model.started.wait, 2)
        before = CountingEvent.sets
        rest = [asyncio.create_task(batcher.infer((np.ones((1, 2), np.float32),), 10)) for _ in range(5)]
        for _ in range(1000):
            if batcher.depth == 5:
                break
            await asyncio.sleep(0)
        during = CountingEvent.sets - before
        model.release.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()
        return during, CountingEvent.sets - before, model.batches

    during, in_all, batches = asyncio.run(scenario())
    assert during == 0
    assert in_all == 1  # the end of the first run
    assert batches == [1, 5]


def test_stop_whose_grace_runs_out_while_a_batch_is_collected_answers_it_and_returns() -> None:
    """The worker waits for a request still being decoded (``arriving``) with one request in its batch; a stop
    whose grace runs out meanwhile cancels the worker: the request in hand gets 503 and stop() returns."""

    async def scenario() -> tuple[bool, str]:
        model = FakeModel(max_queue_delay_us=30_000_000)  # the batch would wait 30 s for the late request
        model.release.set()
        batcher = _batcher(model)
        batcher.start()
        first = asyncio.create_task(batcher.infer((np.ones((1, 2), np.float32),), 60))
        await asyncio.to_thread(model.started.wait, 2)  # the first request's batch runs (its run time unknown)
        late = batcher.admit()  # decoding: the next batch waits for it
        held = asyncio.create_task(batcher.infer((np.ones((1, 2), np.float32),), 60))
        await first
        for _ in range(100):
            await asyncio.sleep(0.01)  # the worker collects `held` and waits for `late`
        try:
            await asyncio.wait_for(batcher.stop(grace_s=0.1), 5)
            returned = True
        except TimeoutError:
            returned = False
        late.__exit__()
        try:
            await held
            error = ""
        except Exception as exc:
            error = str(exc)
        return returned, error

    returned, error = asyncio.run(scenario())
    assert returned, "stop() did not return"
    assert "stopped; retry" in error


def _clients(
    model: FakeModel, clients: int, rounds: int, think_s: float, tell: bool
) -> Callable[[Batcher], Awaitable[list[float]]]:
    """``clients`` clients that each send their next request ``think_s`` after their answer, telling the
    batcher how long after their previous answer each request came (``tell``; the HTTP protocol tells the
    slower of a connection's last two, the batcher takes what it is told); returns every request's wait."""

    async def client(batcher: Batcher, i: int, waits: list[float]) -> None:
        loop = asyncio.get_running_loop()
        answered: float | None = None
        for _ in range(rounds):
            sent = loop.time()
            after = None if answered is None or not tell else sent - answered
            (out,) = await batcher.infer((np.full((1, 2), i, np.float32),), 30, returned_after=after)
            np.testing.assert_array_equal(out, np.full((1, 2), 2 * i, np.float32))
            answered = loop.time()
            waits.append(answered - sent)
            await asyncio.sleep(think_s)

    async def run(batcher: Batcher) -> list[float]:
        waits: list[float] = []
        await asyncio.gather(*(client(batcher, i, waits) for i in range(clients)))
        return waits

    return run


def test_clients_that_come_back_at_once_run_together_not_in_alternate_batches() -> None:
    """4 clients, each back 5 ms after its answer, on a model that runs 20 ms a batch. Until each client has
    come back once the batcher cannot tell (batches 1, 3, 1); then the four run together, and the last batch,
    the three clients with a round left, waits the queue delay for the fourth once. Without the clients'
    return times the batches alternate 1, 3, 1, 3: the first client back found the batcher idle."""

    async def scenario() -> list[int]:
        model = FakeModel(before=lambda _: time.sleep(0.02))
        model.release.set()
        batcher = _batcher(model)
        batcher.start()
        await _clients(model, clients=4, rounds=6, think_s=0.005, tell=True)(batcher)
        await batcher.stop()
        return model.batches

    assert asyncio.run(scenario()) == [1, 3, 1, 4, 4, 4, 4, 3]


def test_requests_from_clients_that_do_not_come_back_at_once_never_wait_for_others() -> None:
    """The same load from clients that do not say how soon they came back (as a new connection or a gRPC
    call does not) never waits for a client expected back: every answer comes within a run or two (each
    20 ms), well under the queue delay (0.3 s), and the batches alternate as before. Expecting every request
    in play back (the count tried first) made nearly every batch wait the whole 0.3 s."""

    async def scenario() -> tuple[list[float], list[int]]:
        model = FakeModel(max_queue_delay_us=300_000, before=lambda _: time.sleep(0.02))
        model.release.set()
        batcher = _batcher(model)
        batcher.start()
        waits = await _clients(model, clients=4, rounds=5, think_s=0.005, tell=False)(batcher)
        await batcher.stop()
        return waits, model.batches

    waits, batches = asyncio.run(scenario())
    assert max(waits) < 0.25, f"a request waited {max(waits):.3f} s: {batches}"
    assert batches[:4] == [1, 3, 1, 3]


def test_a_batch_waits_for_no_client_whose_request_would_not_fit() -> None:
    """Clients sending 3 samples each and back 0.15 s after their answers (within the 0.3 s delay: expected
    back) on a model that takes 8 per batch: once a batch holds 6 samples it runs at once, as no expected
    request fits; waiting for one would hold every batch until the next client came back, then run without it.
    Measured per batch of 6, from its later request's arrival to its run (how long batches of 3 wait, for clients
    expected back or gone, depends on how the clients fall into step, and is not this test's)."""
    sent: dict[float, float] = {}  # a request's tag (client * 10 + round, its every value) -> when it was sent
    full: list[float] = []  # each batch of 6: its run's start minus its later request's sending

    def before(x: np.ndarray) -> None:
        if len(x) == 6:
            full.append(time.monotonic() - max(sent[tag] for tag in set(x[:, 0].tolist())))
        time.sleep(0.02)

    async def scenario() -> list[int]:
        model = FakeModel(max_queue_delay_us=300_000, before=before)
        model.release.set()
        batcher = _batcher(model)
        batcher.start()

        async def client(i: int) -> None:
            answered: float | None = None
            for r in range(5):
                sent[i * 10 + r] = now = time.monotonic()
                after = None if answered is None else now - answered
                await batcher.infer((np.full((3, 2), i * 10 + r, np.float32),), 30, returned_after=after)
                answered = time.monotonic()
                await asyncio.sleep(0.15)

        await asyncio.gather(*(client(i) for i in range(4)))
        await batcher.stop()
        return model.batches

    batches = asyncio.run(scenario())
    assert max(batches) <= 8
    assert len(full) >= 3, f"too few batches of 6 to judge: {batches}"
    assert max(full) < 0.1, f"a full batch waited {max(full):.3f} s after its last request; batches {batches}"


def test_clients_expected_back_are_not_waited_for_once_their_time_has_passed() -> None:
    """After a closed loop of clients that came back at once, the next request that comes more than twice the
    queue delay (0.3 s) after the last batch ended runs at once: whoever was expected back is not coming."""

    async def scenario() -> tuple[int, float]:
        model = FakeModel(max_queue_delay_us=300_000, before=lambda _: time.sleep(0.02))
        model.release.set()
        batcher = _batcher(model)
        batcher.start()
        await _clients(model, clients=4, rounds=3, think_s=0.005, tell=True)(batcher)
        expected = batcher.expected
        await asyncio.sleep(0.65)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.infer((np.ones((1, 2), np.float32),), 30)
        took = loop.time() - start
        await batcher.stop()
        return expected, took

    expected, took = asyncio.run(scenario())
    assert expected > 1, "the closed loop left no client expected back: the test shows nothing"
    assert took < 0.2, f"a request {took:.3f} s after the delay had passed still waited for expected clients"
