"""``squall.Stream``: a remote generator's values, as they are yielded, with backpressure.

The worker pauses the generator while ``window`` values are unread; this side tells it how many
were read (an ACK every quarter window, so the pipe never drains), so memory stays bounded on
worker, router and client however fast the generator and however slow the reader. Closing the
stream early (``break``, ``close()``, garbage collection) cancels the remote generator, whose
``finally`` blocks run.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from squall import protocol, serialization
from squall.protocol import Frame, Status

T = TypeVar("T")

DEFAULT_WINDOW = 128

_END = object()


class Stream(Generic[T]):
    """An iterator (and async iterator) over what a remote generator yields.

    Raises, from iteration: the generator's exception, where it happened, after the values
    yielded before it.
    """

    task_id: int = 0
    #: set by the executor: stops the remote generator and forgets the task
    canceller: Callable[[int], None] | None = None

    def __init__(self, window: int, send: Callable[[list[Frame]], None]) -> None:
        self.window = window
        self._send = send
        self._lock = threading.Condition(threading.Lock())
        self._buffer: collections.deque[list[Frame]] = collections.deque()
        self._end: tuple[int, list[Frame]] | None = None
        self._closed = False
        self._unacked = 0
        self.received = 0
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # -- fed by the I/O driver --------------------------------------------------------------

    def _squall_item(self, item: protocol.StreamItem) -> None:
        if item.packed:
            values = [[v] for v in protocol.unpack_values(item.frames[0], item.n_values)]
        else:
            values = [item.frames]
        with self._lock:
            self._buffer.extend(values)
            self.received += len(values)
            self._wake()

    def _squall_outcome(self, status: int, frames: list[Frame]) -> None:
        with self._lock:
            self._end = (status, frames)
            self._wake()

    def _squall_fail(self, exc: BaseException) -> None:
        self._squall_outcome(Status.ERROR, serialization.dumps_exception(exc))

    def _wake(self) -> None:
        self._lock.notify_all()
        waiters, self._async_waiters = self._async_waiters, []
        for loop, waiter in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # that event loop is closed: nobody waits there any more
                pass

    # -- read by the caller -----------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            while not self._buffer and self._end is None and not self._closed:
                self._lock.wait()
            value = self._take()
        if value is _END:
            raise StopIteration
        return value  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            with self._lock:
                if self._buffer or self._end is not None or self._closed:
                    value = self._take()
                    break
                waiter = asyncio.get_running_loop().create_future()
                self._async_waiters.append((asyncio.get_running_loop(), waiter))
            await waiter
        if value is _END:
            raise StopAsyncIteration
        return value  # type: ignore[no-any-return]

    def _take(self) -> Any:
        """The next value, or _END; raises the generator's error. Called with the lock held."""
        if self._buffer:
            frames = self._buffer.popleft()
            self._unacked += 1
            if self._unacked >= max(1, self.window // 4):
                self._send(protocol.encode_ack([(self.task_id, self._unacked)]))
                self._unacked = 0
            return serialization.loads(frames)
        if self._closed or self._end is None:
            return _END
        status, frames = self._end
        if status == Status.ERROR:
            self._closed = True
            raise serialization.loads_exception(frames)
        return _END

    def close(self) -> None:
        """Stop reading: the remote generator is closed (its ``finally`` runs), its slot freed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._end is None
            self._buffer.clear()
            self._wake()
        if running and self.canceller is not None:
            self.canceller(self.task_id)

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver may be gone already
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "done" if self._end else "running"
        return f"<squall.Stream task={self.task_id} {state} buffered={len(self._buffer)}>"


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
