"""One named queue's waiting tasks: highest priority first, FIFO among equals.

Each priority in use has a :class:`~squall.router.fairqueue.FairQueue` (so clients still take
turns within a priority), and a heap holds the priorities in use. Taking a task is one heap
peek and one FIFO pop: the cost does not grow with the number of priorities, only a priority
appearing or emptying costs a heap push or pop.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from squall.router.fairqueue import FairQueue


class Prioritised(Protocol):
    client: bytes
    cancelled: bool
    priority: int


T = TypeVar("T", bound=Prioritised)


class Lane(Generic[T]):
    """The waiting tasks of one queue (of one worker group), by priority."""

    def __init__(self) -> None:
        self._levels: dict[int, FairQueue[T]] = {}
        #: priorities with a FairQueue, negated (heapq is a min-heap)
        self._order: list[int] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        """Live tasks, highest priority first (within one, not the exact dispatch order)."""
        for priority in sorted(self._levels, reverse=True):
            yield from self._levels[priority]

    def append(self, task: T) -> None:
        self._level(task.priority).append(task)
        self._len += 1

    def appendleft(self, task: T) -> None:
        """Back at the head of its priority (it was taken from a worker)."""
        self._level(task.priority).appendleft(task)
        self._len += 1

    def popleft(self) -> T:
        """The next task: of the highest priority waiting, clients in turn.

        Raises:
            IndexError: the lane is empty.
        """
        while self._order:
            priority = -self._order[0]
            level = self._levels[priority]
            if level:
                task = level.popleft()
                self._len -= 1
                if not level:
                    self._retire(priority)
                return task
            self._retire(priority)  # only dropped tasks were left in it
        raise IndexError("pop from an empty Lane")

    def drop(self, task: T) -> None:
        """A queued task was cancelled (``task.cancelled`` set): stop counting it."""
        self._levels[task.priority].drop(task)
        self._len -= 1

    def drop_client(self, client: bytes) -> int:
        """Remove every task of ``client``; return how many live ones there were."""
        dropped = 0
        for priority, level in list(self._levels.items()):
            dropped += level.drop_client(client)
            if not level:
                self._retire(priority)
        self._len -= dropped
        return dropped

    def by_priority(self) -> dict[int, int]:
        """Live tasks per priority in use."""
        return {p: len(level) for p, level in self._levels.items() if level}

    def _level(self, priority: int) -> FairQueue[T]:
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = FairQueue()
            heapq.heappush(self._order, -priority)
        return level

    def _retire(self, priority: int) -> None:
        del self._levels[priority]
        self._order.remove(-priority)
        heapq.heapify(self._order)
