"""``squall.Future``: a real ``concurrent.futures.Future`` that asyncio can also await."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any, Generic, TypeVar

from squall import serialization
from squall.errors import SerializationError
from squall.protocol import Frame, Status

T = TypeVar("T")


class _Undecoded:
    """A result's frames, as they arrived; unpickled on first access."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames


class Future(concurrent.futures.Future[T]):
    """The outcome of one task.

    Being a ``concurrent.futures.Future``, it works with ``concurrent.futures.wait`` and
    ``as_completed``; ``await fut`` works too, without blocking the event loop.

    A result is unpickled on first ``result()``, in the caller's thread: the client's I/O thread
    only routes frames, and a result nobody reads (one only passed on to another task) is never
    unpickled here at all.
    """

    task_id: int = 0
    owner: object = None  # the client core that submitted it

    #: set by the executor: tells the router to drop (or stop) the task
    canceller: Callable[[int], None] | None = None

    def cancel(self) -> bool:
        """Cancel the task; the router drops it, or stops it if a worker already runs it.

        Returns False, as ``concurrent.futures`` does, once the outcome is here.
        """
        if not super().cancel():
            return False
        if self.canceller is not None:
            self.canceller(self.task_id)
        return True

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():  # a finished future costs no trip through the event loop
            yield from _asyncio_future(self).__await__()
        return self.result()

    def result(self, timeout: float | None = None) -> T:
        value = super().result(timeout)
        if isinstance(value, _Undecoded):
            return self._decode(value)  # type: ignore[no-any-return]
        return value

    def _decode(self, raw: _Undecoded) -> Any:
        with _decode_lock:
            if self._result is not raw:  # another thread decoded it meanwhile
                return self.result()
            try:
                self._result = serialization.loads(raw.frames)
            except Exception as exc:
                self._result = None
                self._exception = SerializationError(f"the result could not be unpickled: {exc!r}")
                raise self._exception from exc
        return self._result

    def _squall_outcome(self, status: int, frames: list[Frame]) -> None:
        """Resolve from a RESULT item (called by the client's I/O driver)."""
        try:
            if status == Status.OK:
                self.set_result(_Undecoded(frames))  # type: ignore[arg-type]
            elif status == Status.ERROR:
                self.set_exception(serialization.loads_exception(frames))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the caller meanwhile

    def _squall_fail(self, exc: BaseException) -> None:
        try:
            self.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass

    def __repr__(self) -> str:
        return super().__repr__().replace("<Future", f"<squall.Future task={self.task_id}", 1)


_decode_lock = threading.Lock()


class _LoopInbox:
    """Hands completed futures to one event loop, many per wake-up.

    ``asyncio.wrap_future`` wakes the loop once per future (a syscall and a loop turn each);
    the I/O thread resolves futures a RESULT batch at a time, so this collects them and wakes
    the loop once per batch.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[Any], concurrent.futures.Future[Any]]] = []

    def post(self, target: asyncio.Future[Any], source: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._done.append((target, source))
            first = len(self._done) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for target, source in done:
            if target.done():
                continue
            if source.cancelled():
                target.cancel()
                continue
            try:
                target.set_result(source.result())
            except BaseException as exc:  # the task's own outcome, handed on
                target.set_exception(exc)


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopInbox] = (
    weakref.WeakKeyDictionary()
)


def _asyncio_future(future: Future[T]) -> asyncio.Future[T]:
    """An asyncio future on the running loop that follows ``future`` (and cancels it)."""
    loop = asyncio.get_running_loop()
    inbox = _inboxes.get(loop)
    if inbox is None:
        inbox = _inboxes[loop] = _LoopInbox(loop)
    target: asyncio.Future[T] = loop.create_future()
    future.add_done_callback(lambda source: inbox.post(target, source))
    target.add_done_callback(lambda t: future.cancel() if t.cancelled() else None)
    return target


class _AsCompleted(Generic[T]):
    """Futures as they complete: ``for`` in threads and greenlets, ``async for`` in asyncio."""

    def __init__(self, futures: Iterable[Future[T]], timeout: float | None) -> None:
        self._futures = list(dict.fromkeys(futures))
        self._timeout = timeout

    def __iter__(self) -> Iterator[Future[T]]:
        return concurrent.futures.as_completed(self._futures, self._timeout)  # type: ignore[return-value]

    def __aiter__(self) -> AsyncIterator[Future[T]]:
        return self._completed_async()

    async def _completed_async(self) -> AsyncIterator[Future[T]]:
        wrapped = {_asyncio_future(f): f for f in self._futures}
        pending: set[asyncio.Future[T]] = set(wrapped)
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise TimeoutError(f"{len(pending)} (of {len(wrapped)}) futures unfinished")
            for finished in done:
                yield wrapped[finished]


def as_completed(futures: Iterable[Future[T]], timeout: float | None = None) -> _AsCompleted[T]:
    """Iterate ``futures`` as they complete, from threads, greenlets or asyncio.

    ``for f in squall.as_completed(fs)`` works like ``concurrent.futures.as_completed`` (and
    under gevent blocks only the calling greenlet); ``async for f in squall.as_completed(fs)``
    waits without blocking the event loop.

    Raises:
        TimeoutError: ``timeout`` seconds passed before every future completed.
    """
    return _AsCompleted(futures, timeout)
