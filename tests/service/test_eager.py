"""service.eager: a coroutine starts in the caller's step; only one that waits gets a Task, which carries on
from where it waited, passing results, exceptions and cancellation through as ``await`` does."""

from __future__ import annotations

import asyncio

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
