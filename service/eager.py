"""Start a coroutine now, in the caller's step of the event loop, and give it a Task only if it has to wait.

``loop.create_task(coro)`` runs nothing at once: the coroutine's first step waits for a later turn of the loop,
behind whatever else is ready, and a Task is built for it even when it would finish without waiting. The
inference a lone client sends does finish without waiting (its batch runs on the event loop), and timed
inside the server that turn cost it 18-44 us (benchmarks/RESULTS.md). Python 3.12 added eager tasks for this
(``asyncio.eager_task_factory``); :func:`start` does the same on every version bnfold supports (3.11 too).

:func:`start` sends the coroutine its first ``None`` here. If it returns, nothing more happens: no Task, no
turn of the loop. If it yields (it awaits a future that is not done yet), the rest of it runs in a Task that
carries on from that point, :func:`_resume`: what the coroutine yields goes to the Task, what the Task sends
or throws in (a result, a cancellation) goes to the coroutine, exactly as ``await`` would pass them through.

Precondition: the part that runs before the first wait runs outside any Task, in the caller's context, so it
must not ask for the current Task (``asyncio.current_task()``, ``asyncio.timeout()``) nor set a context
variable (it would stay set for the caller; bnfold's inference path sets none); after the first wait it runs
in the Task, in a copy of that context.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any


def start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` until it first waits; None when it finished, else the Task that runs the rest."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_resume(coro, waiting))


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, Any, None]:
    """``coro`` from where it yielded ``waiting``, driven by the Task that awaits this (``yield from`` for a
    coroutine that has already started)."""
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:  # a cancellation or an exception thrown in by the Task: the coroutine's
            try:
                waiting = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration:
                return
