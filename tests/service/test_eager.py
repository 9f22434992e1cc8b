"""service.eager: a coroutine starts in the caller's step; only one that waits gets a Task, which carries on
from where it waited, passing results, exceptions and cancellation through as ``await`` does."""

from __future__ import annotations

import asyncio
import collections.abc

import pytest

from service import eager


def test_a_coroutine_that_never_waits_runs_to_its_end_at_once_without_a_task() -> None:
    done: list[str] = []

    async def quick() -> None:
        done.append("answered")

    async def main() -> tuple[asyncio.Task[None] | None, list[str], int]:
        before = len(asyncio.all_tasks())
        task = eager.start(asyncio.get_running_loop(), quick())
        return task, list(done), len(asyncio.all_tasks()) - before

    task, seen, new_tasks = asyncio.run(main())
    assert task is None and seen == ["answered"] and new_tasks == 0


def test_one_that_waits_runs_up_to_the_wait_now_and_the_rest_in_a_task() -> None:
    steps: list[object] = []

    async def waits(first: asyncio.Future[int], second: asyncio.Future[int]) -> None:
        steps.append("before")
        steps.append(await first)
        await asyncio.sleep(0)  # a bare yield passes through as well
        try:
            await second
        except ValueError as exc:
            steps.append(f"caught {exc}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        task = eager.start(loop, waits(first, second))
        assert steps == ["before"] and task is not None and not task.done()
        first.set_result(7)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert steps == ["before", 7]
        second.set_exception(ValueError("bad"))
        await task
        assert steps == ["before", 7, "caught bad"]

    asyncio.run(main())


def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    cleaned: list[bool] = []

    async def waits(future: asyncio.Future[None]) -> None:
        try:
            await future
        finally:
            cleaned.append(future.cancelled())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        task = eager.start(loop, waits(future))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert cleaned == [True]


def test_a_task_cancelled_before_its_first_step_cancels_the_wait_too() -> None:
    """The connection can go away (and the Task be cancelled) before the loop ever ran the Task: the future
    the coroutine waits on is cancelled, as Task.cancel does for a Task that has run, so the request's own
    clean-up sees a cancelled wait."""
    seen: list[bool] = []

    async def waits(future: asyncio.Future[None]) -> None:
        try:
            await future
        finally:
            seen.append(future.cancelled())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        task = eager.start(loop, waits(future))
        assert task is not None
        task.cancel()  # no turn of the loop in between
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == [True]


def test_what_a_task_carries_on_is_a_coroutine_to_asyncio() -> None:
    """asyncio.create_task takes coroutines only (from Python 3.12 a generator, even a types.coroutine one, is
    refused)."""

    async def waits(future: asyncio.Future[None]) -> None:
        await future

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        task = eager.start(loop, waits(future))
        assert task is not None and isinstance(task.get_coro(), collections.abc.Coroutine)
        future.set_result(None)
        await task

    asyncio.run(main())
