"""``squall.Stream``: a remote generator's values, as they are yielded, with backpressure.

The worker pauses the generator while ``window`` values are unread; this side tells it how many
were read (an ACK every quarter window, so the pipe never drains), so memory stays bounded on
worker, router and client however fast the generator and however slow the reader. Closing the
stream early (``break``, ``close()``, garbage collection) cancels the remote generator, whose
``finally`` blocks run.

Values and the generator's error are unpickled by the reader, as it takes each one: the I/O
thread only files frames, so nothing a worker sends runs here before the reader asks for it.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from squall import protocol, serialization
from squall.client.future import decode_error
from squall.errors import SerializationError
from squall.protocol import Frame, Status

T = TypeVar("T")

DEFAULT_WINDOW = 128

_END = object()


class _Failed:
    """How the stream ended, when it failed: the error's frames (unpickled by the reader when it
    gets there), or an exception raised on this side (a lost router, a failed dependency)."""

    __slots__ = ("error",)

    def __init__(self, error: list[Frame] | BaseException) -> None:
        self.error = error

    def exception(self) -> BaseException:
        if isinstance(self.error, BaseException):
            return self.error
        return decode_error(self.error)


class Stream(Generic[T]):
    """An iterator (and async iterator) over what a remote generator yields.

    Raises, from iteration: the generator's exception, where it happened, after the values
    yielded before it.
    """

    task_id: int = 0
    #: set by the executor: stops the remote generator and forgets the task
    canceller: Callable[[int], None] | None = None
    #: how a value's frames become the value: unpickled, or JSON for a JSON call
    loads: Callable[[list[Frame]], Any] = staticmethod(serialization.loads)

    def __init__(self, window: int, send: Callable[[list[Frame]], None]) -> None:
        self.window = window
        self._send = send
        self._lock = threading.Condition(threading.Lock())
        self._buffer: collections.deque[list[Frame]] = collections.deque()
        #: how the generator ended: _END for good, _Failed with its error; None while it runs
        self._end: object | None = None
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
        self._finish(_Failed(frames) if status == Status.ERROR else _END)

    def _squall_fail(self, exc: BaseException) -> None:
        self._finish(_Failed(exc))

    def _squall_started(self) -> None:
        """A stream has no running state to enter."""

    def _squall_withdrawn(self) -> None:
        """Streams are closed, not withdrawn: nothing asks the router to drop one."""

    def _squall_held(self) -> None:
        """Streams are never background tasks."""

    def _squall_rerunnable(self) -> bool:
        """Only a stream that delivered nothing may run again: a rerun would repeat values."""
        return self.received == 0

    def _finish(self, end: object) -> None:
        with self._lock:
            self._end = end
            self._wake()

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
            taken = self._take()
        value = _open(taken, self.loads)
        if value is _END:
            raise StopIteration
        return value  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            with self._lock:
                if self._buffer or self._end is not None or self._closed:
                    taken = self._take()
                    break
                waiter = asyncio.get_running_loop().create_future()
                self._async_waiters.append((asyncio.get_running_loop(), waiter))
            await waiter
        value = _open(taken, self.loads)
        if value is _END:
            raise StopAsyncIteration
        return value  # type: ignore[no-any-return]

    def _take(self) -> Any:
        """The next value's frames, _END, or the _Failed end. Called with the lock held.

        Takes, and does not unpickle: that is :func:`_open`'s, outside the lock, so the I/O
        thread never waits for the reader's unpickling to file the next values.
        """
        if self._buffer:
            frames = self._buffer.popleft()
            self._unacked += 1
            if self._unacked >= max(1, self.window // 4):
                self._send(protocol.encode_ack([(self.task_id, self._unacked)]))
                self._unacked = 0
            return frames
        if self._closed or self._end is None:
            return _END
        if isinstance(self._end, _Failed):
            self._closed = True  # raised once; iterating again ends the stream
        return self._end

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


def _open(taken: Any, loads: Callable[[list[Frame]], Any]) -> Any:
    """A value from what :meth:`Stream._take` took, unpickled in the reader's thread; _END as
    it is; raises the generator's error.

    Raises:
        SerializationError: the value could not be unpickled (the stream goes on).
    """
    if taken is _END:
        return _END
    if isinstance(taken, _Failed):
        raise taken.exception()
    try:
        return loads(taken)
    except Exception as exc:
        raise SerializationError(f"a streamed value could not be unpickled: {exc!r}") from exc


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
