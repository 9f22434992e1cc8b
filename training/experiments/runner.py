"""Run every (experiment, seed) pair, in this process or in worker processes, with a progress bar and an ETA.

A run is one seed of one experiment. Each run uses one torch thread (see :mod:`training.experiments.common`),
so results are the same with ``jobs=1`` (in this process, as the tests do) and with a pool of workers. Workers
count finished training steps in a shared counter that this process turns into the bar and the time estimate.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from typing import Any

from training.experiments import fig1, fig2, popstats
from training.experiments.common import Settings, Tick, Timing, one_thread, timed
from training.experiments.experiment import Experiment, Result, Section
from training.progress import progress_bar

logger = logging.getLogger(__name__)

EXPERIMENTS: dict[str, Experiment] = {e.key: e for e in (fig1.EXPERIMENT, fig2.EXPERIMENT, popstats.EXPERIMENT)}
LOG_EVERY_S = 30.0
MIN_FRACTION = 0.02  # no estimate before 2% of the steps are done: the first steps include start-up
_counter: Any = None  # in a worker: the shared step counter


class Progress:
    """Training steps done out of those planned: a tqdm bar on a terminal, and a log line with the ETA."""

    def __init__(self, total: int, runs: int, workers: int) -> None:
        self.total, self.done = total, 0
        self.started = self.logged = time.monotonic()
        self.bar = progress_bar(total, desc="experiments")
        logger.info("%d training steps planned in %d runs on %d worker(s)", total, runs, workers)

    def tick(self, k: int) -> None:
        self.set(self.done + k)

    def set(self, done: int) -> None:
        self.bar.update(done - self.done)
        self.done = done
        now = time.monotonic()
        if now - self.logged >= LOG_EVERY_S and done >= MIN_FRACTION * self.total:
            self.logged = now
            left = (now - self.started) * (self.total - done) / done
            logger.info(
                "%d/%d steps (%.0f%%), about %.0f min %02.0f s left",
                done,
                self.total,
                100 * done / self.total,
                *divmod(left, 60),
            )

    def close(self) -> None:
        self.bar.close()


def _init_worker(counter: Any) -> None:
    global _counter
    _counter = counter


def _worker_tick(k: int) -> None:
    with _counter.get_lock():
        _counter.value += k


def run_one(settings: Settings, key: str, plan: Any, seed: int, tick: Tick | None = None) -> tuple[Result, Timing]:
    """One seed of one experiment, with one torch thread; its result and the seconds it took (wall, CPU)."""
    data = settings.load()
    with one_thread():
        result, seconds = timed(lambda: EXPERIMENTS[key].run_seed(plan, data, seed, tick))
    return result, seconds


def _pooled(settings: Settings, runs: list[tuple[str, Any, int]], progress: Progress) -> list[tuple[Result, Timing]]:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    counter = ctx.Value("q", 0)
    with ProcessPoolExecutor(settings.jobs, mp_context=ctx, initializer=_init_worker, initargs=(counter,)) as pool:
        futures: list[Future[tuple[Result, Timing]]] = [
            pool.submit(run_one, settings, key, plan, seed, _worker_tick) for key, plan, seed in runs
        ]
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()  # raise a worker's error now
                progress.set(counter.value)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    return [f.result() for f in futures]


def run_experiments(settings: Settings, keys: list[str]) -> list[Section]:
    """Every seed of every experiment in ``keys``, then each experiment's summary across seeds."""
    data = settings.load()
    plans = {key: EXPERIMENTS[key].plan(settings, data) for key in keys}
    runs = [(key, plans[key], seed) for key in keys for seed in settings.run_seeds]
    order = sorted(range(len(runs)), key=lambda i: -EXPERIMENTS[runs[i][0]].steps(runs[i][1]))  # longest first
    total = sum(EXPERIMENTS[key].steps(plan) for key, plan, _ in runs)
    progress = Progress(total, len(runs), settings.jobs)
    try:
        if settings.jobs > 1:
            done = _pooled(settings, [runs[i] for i in order], progress)
            outcome = {order[j]: done[j] for j in range(len(runs))}
        else:
            outcome = {i: run_one(settings, *runs[i], tick=progress.tick) for i in order}
    finally:
        progress.close()
    sections = []
    for key in keys:
        mine = [outcome[i] for i in range(len(runs)) if runs[i][0] == key]
        results, seconds = [r for r, _ in mine], [s for _, s in mine]
        sections.append(EXPERIMENTS[key].summarize(settings, plans[key], results, seconds, asdict(plans[key])))
    return sections
