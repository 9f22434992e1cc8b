"""Start a coroutine now, in the caller's step of the event loop, and give it a Task only if it has to wait.

``loop.create_task(coro)`` runs nothing at once: the coroutine's first step waits for a later turn of the loop,
behind whatever else is ready, and a Task is built for it even when it would finish without waiting. The
inference a lone client sends does finish without waiting (its batch runs on the event loop), and timed
inside the server that turn cost it 18-44 us (benchmarks/RESULTS.md). Python 3.12 added eager tasks for this
(``asyncio.eager_task_factory``); :func:`start` does the same on every version bnfold supports (3.11 too).

On Python 3.12 and later :func:`start` is the standard library's: ``asyncio.Task(coro, eager_start=True)``.
On 3.11 it sends the coroutine its first ``None`` here. If it returns, nothing more happens: no Task, no turn
of the loop. If it yields (it awaits a future that is not done yet), the rest of it runs in a Task that
carries on from that point, through :class:`_Resumed`: the Task's first step gets what the coroutine yielded,
and what the Task sends or throws in later (a result, a cancellation) goes to the coroutine, exactly as
``await`` passes them through. A Task cancelled before its first step first cancels the future the coroutine
waits on, as ``Task.cancel`` does for a Task that has run.

Precondition, on 3.11: the part that runs before the first wait runs outside any Task, in the caller's
context, so it must not ask for the current Task (``asyncio.current_task()``, ``asyncio.timeout()``) nor set a context
variable (it would stay set for the caller; bnfold's inference path sets none); after the first wait it runs
in the Task, in a copy of that context. On 3.12+ the eager step runs in its Task already.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Generator
from typing import Any

_HANDED = object()  # _Resumed's first step is done: what the coroutine waited on went to the Task


def start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` until it first waits; None when it finished, else the Task that runs the rest."""
    if sys.version_info >= (3, 12):
        task: asyncio.Task[None] = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
        return None if task.done() else task
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_Resumed(coro, waiting))


class _Resumed(Coroutine[Any, Any, None]):
    """``coro``, which has run up to yielding ``waiting``, as a coroutine a Task can carry on (Python 3.11)."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def send(self, value: Any) -> Any:
        if self._waiting is not _HANDED:  # the Task's first step: hand it what the coroutine waits on
            waiting, self._waiting = self._waiting, _HANDED
            return waiting
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if self._waiting is not _HANDED:  # cancelled before the Task ran: cancel the wait, as Task.cancel does
            waiting, self._waiting = self._waiting, _HANDED
            cancel = getattr(waiting, "cancel", None)
            if cancel is not None:
                cancel()
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - the three-argument form; Tasks throw one

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, None]:  # pragma: no cover - only Tasks drive it, by send/throw
        raise TypeError("an eagerly started coroutine is carried on by its Task only")
