"""The batcher's queue: one FIFO per priority level, each followed by its delayed requests, as Triton orders
them. The head is the oldest request of the highest level (level 0) that has not timed out; then that level's
delayed requests (timed out under a DELAY policy), then the next level's, and so on."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, Protocol


class Queued(Protocol):
    level: int


class PriorityQueue:
    """FIFO per level (``item.level``, 0 first) with a delayed FIFO after each."""

    def __init__(self, levels: int) -> None:
        self._ready: list[collections.deque[Any]] = [collections.deque() for _ in range(levels)]
        self._delayed: list[collections.deque[Any]] = [collections.deque() for _ in range(levels)]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[Any]:
        for ready, delayed in zip(self._ready, self._delayed, strict=True):
            yield from ready
            yield from delayed

    def level_size(self, level: int) -> int:
        return len(self._ready[level]) + len(self._delayed[level])

    def append(self, item: Queued) -> None:
        self._ready[item.level].append(item)
        self._size += 1

    def _first(self) -> collections.deque[Any]:
        for ready, delayed in zip(self._ready, self._delayed, strict=True):
            if ready:
                return ready
            if delayed:
                return delayed
        raise IndexError("the queue is empty")

    def head(self) -> Any:
        """The next request to batch (IndexError when empty)."""
        return self._first()[0]

    def popleft(self) -> Any:
        item = self._first().popleft()
        self._size -= 1
        return item

    def remove(self, item: Queued) -> bool:
        """Take ``item`` out wherever it waits; False when it is not queued (it started or left)."""
        for queue in (self._ready[item.level], self._delayed[item.level]):
            try:
                queue.remove(item)
            except ValueError:
                continue
            self._size -= 1
            return True
        return False

    def delay(self, item: Queued) -> None:
        """Move ``item`` (if still waiting in its level) behind its level's requests that have not timed out."""
        try:
            self._ready[item.level].remove(item)
        except ValueError:
            return
        self._delayed[item.level].append(item)
