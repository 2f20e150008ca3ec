"""``squall.Future``: a real ``concurrent.futures.Future`` that asyncio can also await."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, PENDING
from typing import Any, Generic, TypeVar, cast

from squall import ids, serialization
from squall.errors import ProtocolError, SerializationError, SquallError, TaskFailed
from squall.protocol import (
    ErrorSummary,
    FailureCode,
    Frame,
    Status,
    StreamItem,
    read_error_summary,
)

T = TypeVar("T")


class _Undecoded:
    """A result's frames, as they arrived; unpickled on first access."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames


class _UndecodedError(BaseException):
    """An error outcome's frames, as they arrived; stands in for the exception until asked.

    A BaseException so that it can be what ``set_exception`` stores: the future is done and its
    waiters and callbacks are told, with nothing unpickled. ``result()`` and ``exception()``
    swap in the real exception on first use.
    """

    def __init__(self, frames: list[Frame]) -> None:
        super().__init__("an error outcome not unpickled yet")
        self.frames = frames


def decode_error(frames: list[Frame]) -> BaseException:
    """The remote exception an error outcome holds; a SerializationError if it cannot be read.

    Unpickling runs code the worker chose: only ever call this in the thread of a caller that
    asked for the outcome, never in the I/O thread.
    """
    try:
        return serialization.loads_exception(frames)
    except Exception as exc:  # a malformed summary; an unloadable pickle is a TaskFailed already
        return _unreadable("the error could not be read", exc)


def _unreadable(what: str, cause: Exception) -> SerializationError:
    error = SerializationError(f"{what}: {cause!r}")
    error.__cause__ = cause
    return error


class HeldBatch:
    """What an ``enqueue`` waits for: the router's word on each of its tasks (one event for
    the batch: an event per future would cost more than the rest of the enqueue)."""

    __slots__ = ("_left", "_lock", "settled", "on_settled")

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()
        self.settled = threading.Event()
        #: called (in the driver's thread) once settled: how an asyncio caller awaits it
        self.on_settled: Callable[[], None] | None = None
        if count == 0:
            self.settled.set()

    def one_settled(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left != 0:
                return
            self.settled.set()
        if self.on_settled is not None:
            self.on_settled()


class Future(concurrent.futures.Future[T]):
    """The outcome of one task.

    Being a ``concurrent.futures.Future``, it works with ``concurrent.futures.wait`` and
    ``as_completed``; ``await fut`` works too, without blocking the event loop.

    An outcome is unpickled on first ``result()`` or ``exception()``, in the caller's thread:
    the client's I/O thread only routes frames, so a worker's pickle runs nothing in this
    process until someone asks for it, and a result nobody reads (one only passed on to
    another task) is never unpickled here at all. (A done-callback runs in the thread that
    resolves the future, the I/O thread included: one that asks decodes there.)
    """

    task_id: int = 0
    owner: object = None  # the client core that submitted it
    #: the task's id as ``squall.ids`` makes it (16 bytes); see :attr:`id`
    _key: bytes = b""
    #: set once the router holds a background task (see ``Executor.enqueue``)
    _held: HeldBatch | None = None
    _was_held = False
    #: how the result's frames become the result: unpickled, or JSON for a JSON call
    loads: Callable[[list[Frame]], Any] = staticmethod(serialization.loads)

    @property
    def id(self) -> str:
        """The task's id: 26 URL-safe characters, unique across routers and restarts, sorting
        by submit time. A background task is known by it to the router (``ex.attach``,
        ``ex.task_info``); a plain task's id is made on first read."""
        if not self._key:
            self._key = ids.new_id()
        return ids.to_text(self._key)

    def _squall_held(self) -> None:
        self._was_held = True
        self._settle_held()

    def _settle_held(self) -> None:
        """The router held the task, or refused it: its enqueue need not wait for it."""
        batch, self._held = self._held, None
        if batch is not None:
            batch.one_settled()

    #: set by the executor: asks the router to drop the task if no worker has it yet, and
    #: returns whether it did
    withdrawer: Callable[[Future[Any]], bool] | None = None

    def cancel(self) -> bool:
        """Cancel the task if it has not started: True means it never ran and never will.

        Only the router knows whether a worker has the task yet, so cancelling a pending
        future costs one round trip to it (a fraction of a millisecond on one machine), waited
        for at most ``squall.client._core.WITHDRAW_TIMEOUT`` seconds (then the answer is
        False). A future already running, or done, answers at once with no round trip, as
        ``concurrent.futures`` does. In the client's I/O thread (a done-callback) or in a
        thread running an asyncio event loop the answer is not waited for: the call returns
        False, and the future is cancelled moments later if the router dropped the task.
        """
        with self._condition:
            if self._state != PENDING or self.withdrawer is None:
                return super().cancel()
        return self.withdrawer(self)

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():  # a finished future costs no trip through the event loop
            yield from _asyncio_future(self).__await__()
        return self.result()

    def result(self, timeout: float | None = None) -> T:
        try:
            value = super().result(timeout)
        except _UndecodedError:
            pass  # decoded below, outside this handler: it must not become the __context__
        else:
            if not isinstance(value, _Undecoded):
                return value
        self._decode()
        if self._exception is None:  # done and decoded (under the lock): no second round
            return cast("T", self._result)
        return super().result()  # the decoded exception, raised

    def exception(self, timeout: float | None = None) -> BaseException | None:
        # A result is decoded too: one that cannot be unpickled is the SerializationError that
        # result() raises, and callers (asyncio.wrap_future, wait(FIRST_EXCEPTION)) that ask
        # here first and then call result() must not be told None.
        error = super().exception(timeout)
        if isinstance(error, _UndecodedError) or isinstance(self._result, _Undecoded):
            self._decode()
            return super().exception()
        return error

    def error_summary(self) -> ErrorSummary | None:
        """A failed outcome's type, message and traceback as text, read without unpickling
        anything (what the HTTP gateway reports); None unless the future failed remotely."""
        with self._condition:
            error = self._exception
            if isinstance(error, _UndecodedError):
                try:
                    return read_error_summary(error.frames[0])
                except ProtocolError:
                    return None
        if isinstance(error, TaskFailed):
            return ErrorSummary(
                FailureCode.RAISED,
                error.type_name,
                error.remote_message,
                error.remote_traceback,
                "",
            )
        if isinstance(error, SquallError):
            return ErrorSummary(
                FailureCode.RAISED, f"squall.{type(error).__name__}", str(error), "", ""
            )
        return None

    def _decode(self) -> None:
        """Unpickle the outcome's frames in place: once, by the first thread that asks.

        Under the future's own (reentrant) lock, which also guards its state, so that
        concurrent callers wait for one decoding and all see its outcome.
        """
        with self._condition:
            if isinstance(self._result, _Undecoded):
                try:
                    self._result = self.loads(self._result.frames)
                except Exception as exc:
                    self._result = None
                    self._exception = _unreadable("the result could not be unpickled", exc)
            elif isinstance(self._exception, _UndecodedError):
                self._exception = decode_error(self._exception.frames)

    def _squall_outcome(self, status: int, frames: list[Frame]) -> None:
        """Resolve from a RESULT item (called by the client's I/O driver): keep the frames,
        unpickle nothing."""
        try:
            if status == Status.OK:
                self.set_result(_Undecoded(frames))  # type: ignore[arg-type]
            elif status == Status.ERROR:
                self.set_exception(_UndecodedError(frames))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the caller meanwhile
        if self._held is not None:  # an outcome (a refusal, say) also ends an enqueue's wait
            self._settle_held()

    def _squall_started(self) -> None:
        """A worker has the task: the future is running (and can no longer be cancelled).

        Only a pending future becomes running: the router says STARTED again each time it
        hands a task to another worker (after a worker died), and concurrent.futures logs a
        CRITICAL error for a second ``set_running_or_notify_cancel``.
        """
        with self._condition:
            if self._state == PENDING:
                self.set_running_or_notify_cancel()

    def _squall_withdrawn(self) -> None:
        """The router dropped the task before any worker had it: the future is cancelled.

        Cancelled and notified in one step, as an executor does when it skips a cancelled
        call: ``wait()`` and ``as_completed()`` count only notified cancellations as done.
        """
        with self._condition:
            if self._state != PENDING:
                return
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]

    def _squall_fail(self, exc: BaseException) -> None:
        try:
            self.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass
        self._settle_held()  # an enqueue waiting for the router's word gives up

    def _squall_item(self, item: StreamItem) -> None:
        """A call streams nothing: values for it would be the router's mistake, and dropped."""

    def _squall_rerunnable(self) -> bool:
        """A call may run again from the start (the router that had it restarted)."""
        return True

    def __repr__(self) -> str:
        text = super().__repr__().replace("<Future", f"<squall.Future task={self.task_id}", 1)
        for placeholder in (_Undecoded, _UndecodedError):  # repr unpickles nothing either
            text = text.replace(f" {placeholder.__name__}>", " (not unpickled yet)>")
        return text


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
        if not first:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if running is self.loop:  # resolved in the loop itself (the asyncio driver)
                self.loop.call_soon(self._drain)
            else:
                self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for target, source in done:
            if not target.done():
                _hand_on(target, source)


def _hand_on(target: asyncio.Future[Any], source: concurrent.futures.Future[Any]) -> None:
    """Copy a finished future's outcome to an asyncio future, in the loop's thread.

    ``source.result()`` unpickles here: the loop is the caller that asked (by awaiting).
    """
    if source.cancelled():
        target.cancel()
        return
    try:
        target.set_result(source.result())
    except BaseException as exc:  # the task's own outcome, handed on
        try:
            target.set_exception(exc)
        except TypeError:  # asyncio refuses StopIteration: it would end the awaiting coroutine
            refused = RuntimeError(f"the task raised {exc!r}")
            refused.__cause__ = exc
            target.set_exception(refused)


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
