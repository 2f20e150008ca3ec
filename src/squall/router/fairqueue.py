"""Queued tasks, FIFO within each client, the clients served in turn.

One FIFO for the whole router made a client's small batch wait behind another client's
100,000 queued tasks. Here each client has its own FIFO and :meth:`FairQueue.popleft` takes
from the clients in rotation, so every client with queued work gets its share of each
dispatch, and one client's order is kept.

Dropping a task is O(1): it stays where it is, is no longer counted, and is skipped when its
turn comes (cancelling 48,000 queued tasks with ``deque.remove`` took seconds).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    """What the queue needs of a task: whose it is, and whether it was dropped."""

    client: bytes
    cancelled: bool


T = TypeVar("T", bound=Queued)


class FairQueue(Generic[T]):
    """Tasks waiting for a worker: per-client FIFOs, served round-robin."""

    def __init__(self) -> None:
        self._fifos: dict[bytes, collections.deque[T]] = {}
        #: clients with queued tasks, the one whose turn it is first
        self._turns: collections.deque[bytes] = collections.deque()
        #: dropped tasks still sitting in a FIFO, per client
        self._dropped: collections.Counter[bytes] = collections.Counter()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        """Live tasks, client by client in turn order (not the exact dispatch order)."""
        for client in self._turns:
            yield from (t for t in self._fifos[client] if not t.cancelled)

    def append(self, task: T) -> None:
        self._fifo(task.client, last=True).append(task)
        self._len += 1

    def appendleft(self, task: T) -> None:
        """Put a task back at the head of its client's FIFO (it was taken from a worker)."""
        self._fifo(task.client, last=False).appendleft(task)
        self._len += 1

    def popleft(self) -> T:
        """The next live task, from the client whose turn it is; then the next client's turn.

        Raises:
            IndexError: the queue is empty.
        """
        while self._turns:
            client = self._turns[0]
            fifo = self._fifos[client]
            task = fifo.popleft()
            dropped = task.cancelled
            if dropped:
                self._dropped[client] -= 1
            if not fifo:
                self._turns.popleft()
                del self._fifos[client]
                self._dropped.pop(client, None)
            elif not dropped:
                self._turns.rotate(-1)
            if not dropped:
                self._len -= 1
                return task
        raise IndexError("pop from an empty FairQueue")

    def drop(self, task: T) -> None:
        """A queued task was cancelled (``task.cancelled`` is already set): stop counting it."""
        self._dropped[task.client] += 1
        self._len -= 1

    def drop_client(self, client: bytes) -> int:
        """Remove every task of ``client``; return how many live ones there were."""
        fifo = self._fifos.pop(client, None)
        if fifo is None:
            return 0
        live = len(fifo) - self._dropped.pop(client, 0)
        self._turns.remove(client)
        self._len -= live
        return live

    def _fifo(self, client: bytes, last: bool) -> collections.deque[T]:
        fifo = self._fifos.get(client)
        if fifo is None:
            fifo = self._fifos[client] = collections.deque()
            if last:
                self._turns.append(client)
            else:
                self._turns.appendleft(client)
        return fifo
