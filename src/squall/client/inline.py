"""Inline mode: ``Executor(inline=True)`` runs each task in the calling process, at submit.

For unit tests, as Celery's ``task_always_eager`` and Dask's synchronous scheduler are: no
router, no worker processes, no sockets, so ``pdb`` stops in a task and ``unittest.mock.patch``
reaches it. What would differ on a worker is kept: the function and its arguments make the
same pickling round trip (an unpicklable argument fails at submit, naming it), the result and
the exception make it back (an exception that cannot travel is a ``TaskFailed``), and the
task's options (timeout, retries, retry_on, backoff) apply as on a worker, with the same
helpers (:mod:`squall.options`): each attempt timed, the call and all it produces; an ``async
def`` retried like a plain function; a stream timed over its whole run and retried only before
its first value. A plain function or generator step past its timeout cannot be interrupted in
this process: the caller stops waiting at the deadline and the call runs on, its result unused,
in a daemon thread.

The function is pickled too (one that cannot travel fails at submit), but the original object
is called, not its unpickled copy: a copy of a function from a test module carries the globals
of its first submit, so ``mock.patch`` of a module attribute, and ``pdb``'s source lines, would
miss it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import itertools
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

from squall import functions, serialization
from squall import options as task_options
from squall.client._core import ClientCore
from squall.client.executor import Executor, _Session
from squall.client.future import Future
from squall.client.stream import _END, DEFAULT_WINDOW, Stream
from squall.errors import ExecutorShutdown, SerializationError, TaskNotFound
from squall.options import DEFAULT, TaskOptions

T = TypeVar("T")
P = ParamSpec("P")

#: ``SQUALL_INLINE`` values that make every ``Executor()`` of the process inline
_TRUE = ("1", "true", "yes", "on")


def wanted(inline: bool | None) -> bool:
    """Whether an Executor is inline: as asked, else as ``SQUALL_INLINE`` says."""
    if inline is not None:
        return inline
    return os.environ.get("SQUALL_INLINE", "").strip().lower() in _TRUE


class InlineExecutor(Executor):
    """An :class:`Executor` that runs every task in the calling thread, at submit.

    Made by ``squall.Executor(inline=True)`` (or any ``Executor()`` under ``SQUALL_INLINE=1``);
    the other arguments are accepted and ignored, so the same code runs either way. Each
    future is done when ``submit`` returns, so ``cancel()`` answers False, as for a task that
    ran. A stream runs its generator as it is read.
    """

    def __init__(self, address: str | None = None, **ignored: Any) -> None:
        self.stream_window = int(ignored.get("stream_window", DEFAULT_WINDOW))
        self.address = address or "inline"
        self._closed = False
        self._lock = threading.Lock()
        self._core = ClientCore()
        self._cluster = None
        self._session = _Session(self._core, None)  # no driver: withdrawing is a no-op
        self._ids = itertools.count(1)
        self._counters = dict.fromkeys(("submitted", "completed", "succeeded", "failed"), 0)
        self._pid = os.getpid()

    def _submit_with(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None,
    ) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` now; return its finished future.

        Raises:
            SerializationError: the function or an argument cannot be pickled (named).
        """
        self._check_open()
        options = task_options.to_send(options)
        fn = functions.local(fn)
        serialization.dumps_function(fn)  # a function that cannot travel fails here too
        future: Future[T] = self._new_future()
        linked, linked_kw, _, failed = self._link_dependencies(args, kwargs)
        if failed is not None:
            future.set_exception(failed)
            return future
        self._run(future, fn, serialization.dumps_call(linked, linked_kw, options))
        return future

    def _submit_calls(
        self,
        fn: Callable[..., T],
        calls: Iterable[tuple[Any, ...]],
        options: TaskOptions | None = None,
    ) -> list[Future[T]]:
        """``map``'s submits: each call runs as it is read from ``calls``."""
        self._check_open()
        options = task_options.to_send(options)
        fn = functions.local(fn)
        serialization.dumps_function(fn)
        futures: list[Future[T]] = []
        for args in calls:
            future: Future[T] = self._new_future()
            futures.append(future)
            linked, _, _, failed = self._link_dependencies(args, {})
            if failed is not None:
                future.set_exception(failed)
                continue
            self._run(future, fn, serialization.dumps_call(linked, {}, options))
        return futures

    def _stream_with(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None,
    ) -> Stream[Any]:
        """Call ``fn`` now; its generator runs as the returned stream is read (its timeout
        counts from now)."""
        self._check_open()
        options = task_options.to_send(options)
        fn = functions.local(fn)
        serialization.dumps_function(fn)
        stream: InlineStream[Any] = InlineStream(self.stream_window)
        stream.task_id = next(self._ids)
        linked, linked_kw, _, failed = self._link_dependencies(args, kwargs)
        if failed is not None:
            stream._squall_fail(failed)
            return stream
        frames = serialization.dumps_call(linked, linked_kw, options)
        self._counters["submitted"] += 1
        stream.start(fn, serialization.loads(frames))
        return stream

    def _new_future(self) -> Future[Any]:
        future: Future[Any] = Future()
        future.owner = self._core
        future.task_id = next(self._ids)
        return future

    def _run(self, future: Future[Any], fn: Callable[..., Any], frames: list[Any]) -> None:
        """Run one task as a worker would, and resolve ``future`` with what came back."""
        self._counters["submitted"] += 1
        future.set_running_or_notify_cancel()
        args, kwargs, options = serialization.loads(frames)
        try:
            value = _round_trip(run_task(fn, args, kwargs, options or DEFAULT))
        except BaseException as exc:  # a task's KeyboardInterrupt is its outcome, as remotely
            self._counters["failed"] += 1
            future.set_exception(_travelled(exc))
        else:
            self._counters["succeeded"] += 1
            future.set_result(value)
        self._counters["completed"] += 1

    def _check_open(self) -> None:
        """Open unless shut down: with no sockets or processes, a forked child may use it."""
        if self._closed:
            raise ExecutorShutdown("cannot schedule new tasks after shutdown")

    def cancel(self, future: Future[Any] | str, interrupt: bool = False) -> bool:
        """False: an inline task has always run by the time anyone can cancel it (and there
        is no router to keep background tasks by id)."""
        if isinstance(future, str):
            raise TaskNotFound(f"no task {future} is kept: an inline executor has no router")
        return future.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing runs in the background: this only refuses new work."""
        self._closed = True
        self._session.close()

    def stats(self) -> dict[str, Any]:
        """Counters shaped as a router's: tasks run here, none queued, no workers."""
        return {
            **self._counters,
            "workers": 0,
            "queued": 0,
            "running": 0,
            "inline": True,
            "client_bodies_sent": 0,
            "client_pending": 0,
        }

    def __repr__(self) -> str:
        return f"<squall.Executor inline submitted={self._counters['submitted']}>"


def run_task(fn: Any, args: Any, kwargs: Any, options: TaskOptions) -> Any:
    """Call ``fn`` with the worker's rules: each attempt under the timeout, retried on
    ``retry_on`` (:func:`squall.options.retrying`, as on a worker); generators drained into a
    list, coroutines run to completion, within the attempt."""
    attempt = functools.partial(_attempt, fn, args, kwargs, options.timeout)
    if not options.retries:
        return attempt()
    return task_options.retrying(attempt, options, time.sleep)


def _attempt(fn: Any, args: Any, kwargs: Any, timeout: float | None) -> Any:
    """One attempt: the call, and its generator drained, within ``timeout``; a coroutine (or
    an async generator) it returns is then run on an event loop, within ``timeout`` too."""
    result = _in_time(lambda: _drained_here(fn(*args, **kwargs)), timeout)
    if inspect.isawaitable(result):
        return run_coroutine(task_options.within(_awaited(result), timeout))
    if inspect.isasyncgen(result):
        return run_coroutine(task_options.within(_drained(result), timeout))
    return result


def _drained_here(result: Any) -> Any:
    """A generator's values as a list; anything else (a coroutine included) as it is."""
    return list(result) if inspect.isgenerator(result) else result


def _in_time(
    call: Callable[[], T],
    timeout: float | None,
    limit: float | None = None,
    late: Callable[[], object] | None = None,
) -> T:
    """``call()``; with a timeout, in a helper thread so that the caller stops waiting at the
    deadline. A thread cannot be interrupted: the call runs on, its result unused, in a daemon
    thread that does not hold the process at exit; ``late()`` runs once it is over (a stream
    closes its generator then). The ``TaskTimeout`` names ``limit`` if given (the task's
    whole time limit, of which ``timeout`` is what was left)."""
    if timeout is None:
        return call()
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    lock = threading.Lock()
    state = {"over": False, "abandoned": False}

    def run() -> None:
        try:
            outcome.set_result(call())
        except BaseException as exc:
            outcome.set_exception(exc)
        with lock:
            state["over"] = True
            abandoned = state["abandoned"]
        if abandoned and late is not None:
            late()

    threading.Thread(target=run, name="squall-inline-timeout", daemon=True).start()
    try:
        return outcome.result(timeout)
    except concurrent.futures.TimeoutError:
        if outcome.done():  # the task's own TimeoutError
            raise
        with lock:
            state["abandoned"] = True
            over = state["over"]
        if over and late is not None:
            late()
        raise task_options.timed_out(limit or timeout) from None


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion: ``asyncio.run``, or in a helper thread when this
    thread already runs an event loop (which must not be re-entered)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="squall-inline") as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _drained(agen: Any) -> list[Any]:
    return [value async for value in agen]


def _round_trip(value: Any) -> Any:
    """``value`` as the caller would get it from a worker: pickled, then unpickled."""
    try:
        frames = serialization.dumps(value)
    except Exception as exc:
        raise SerializationError(
            f"result of type {type(value).__qualname__} cannot be pickled: {exc}"
        ) from exc
    return serialization.loads(frames)


def _travelled(exc: BaseException) -> BaseException:
    """The exception as a worker's would arrive: itself if it pickles, else ``TaskFailed``,
    with the traceback text chained as its cause."""
    return serialization.loads_exception(serialization.dumps_exception(exc))


class InlineStream(Stream[T]):
    """A :class:`Stream` whose generator runs in the reader's thread, one value per read.

    The task's options apply as on a worker: its timeout bounds the whole run (counted from
    ``stream()``; a read past it raises ``squall.TaskTimeout``), and a failure before the first
    value (the call's, or the generator's before it yields) is retried on ``retry_on``.
    """

    def __init__(self, window: int) -> None:
        super().__init__(window, _nothing)
        self._values: Iterator[Any] | None = None
        self._agen: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        #: the call (fn, args, kwargs) to make again for a retry; None before start (a failed
        #: dependency). Not a bound method: the stream must not refer to itself, so that
        #: dropping it closes the generator at once.
        self._call: tuple[Any, Any, Any] | None = None
        self._options = DEFAULT
        self._deadline: float | None = None
        self._retry = 0

    def start(
        self, fn: Any, call: tuple[Any, Any, Any], options: TaskOptions | None = None
    ) -> None:
        """Call the generator function; a call that fails (or returns no iterable) fails the
        stream at its first read, as on a worker."""
        args, kwargs, sent = call
        self._options = options or sent or DEFAULT
        self._call = (fn, args, kwargs)
        self._open(fn, args, kwargs)

    def _open(self, fn: Any, args: Any, kwargs: Any) -> None:
        """One attempt's call (its timeout starts now)."""
        timeout = self._options.timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._closed = False
        try:
            result = _in_time(lambda: fn(*args, **kwargs), timeout)
            if inspect.isawaitable(result):
                awaited = task_options.within(_awaited(result), self._remaining(), limit=timeout)
                result = run_coroutine(awaited)
        except BaseException as exc:
            self._failure = exc
            return
        if inspect.isasyncgen(result):
            self._agen = result
            return
        try:
            self._values = iter(result)
        except TypeError:
            self._failure = TypeError(
                f"stream() needs a generator or iterable, {serialization.describe(fn)} "
                f"returned a {type(result).__name__}"
            )

    def _remaining(self) -> float | None:
        """Seconds left of this attempt's timeout; TaskTimeout once there are none."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise task_options.timed_out(self._options.timeout or 0.0)
        return left

    def _retry_pause(self, exc: BaseException) -> float | None:
        """The pause before running the generator again after ``exc``, if it is to be: only
        while nothing was yielded, on ``retry_on``, ``retries`` times."""
        options = self._options
        if (
            self._call is None
            or self.received
            or self._retry >= options.retries
            or not isinstance(exc, options.retry_on)
        ):
            return None
        self._retry += 1
        return options.pause(self._retry)

    def _squall_fail(self, exc: BaseException) -> None:
        self._failure = exc

    def __next__(self) -> T:
        value = self._step()
        if value is _END:
            raise StopIteration
        return value  # type: ignore[no-any-return]

    async def __anext__(self) -> T:
        if self._agen is None:  # a plain generator: each step runs here, in the loop
            try:
                return self.__next__()
            except StopIteration:
                raise StopAsyncIteration from None
        value = await self._async_take()
        if value is _END:
            raise StopAsyncIteration
        return value  # type: ignore[no-any-return]

    async def _async_take(self) -> Any:
        """An async generator's next value, read from ``async for``: on the caller's loop."""
        while True:
            if self._agen is None:  # failed, closed, or run again as a plain generator
                return self._step()
            try:
                value = await task_options.within(
                    self._agen.__anext__(), self._remaining(), limit=self._options.timeout
                )
            except StopAsyncIteration:
                await self._agen.aclose()
                self._agen = None
                self._closed = True
                return _END
            except BaseException as exc:
                self._agen = None
                self._closed = True
                pause = self._retry_pause(exc)
                if pause is None or self._call is None:
                    raise _travelled(exc) from None
                await asyncio.sleep(pause)
                self._open(*self._call)
                continue
            self.received += 1
            return _round_trip(value)

    def _take(self) -> Any:
        """The next value (StopIteration at the end), within the time left."""
        remaining, limit = self._remaining(), self._options.timeout
        values = self._values
        if values is not None:
            return _in_time(lambda: next(values), remaining, limit, getattr(values, "close", None))
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        step = task_options.within(self._agen.__anext__(), remaining, limit=limit)
        try:
            return _on_loop(self._loop, step)
        except StopAsyncIteration:
            raise StopIteration from None

    def _step(self) -> Any:
        while True:
            try:
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    self._closed = True
                    raise failure
                if self._closed:
                    return _END
                value = self._take()
            except StopIteration:
                self.close()
                return _END
            except BaseException as exc:
                self.close()
                pause = self._retry_pause(exc)
                if pause is None or self._call is None:
                    raise _travelled(exc) from None
                time.sleep(pause)
                self._open(*self._call)
                continue
            self.received += 1
            return _round_trip(value)

    def close(self) -> None:
        """Close the generator (its ``finally`` runs now)."""
        if self._closed and self._values is None and self._agen is None:
            return
        self._closed = True
        values, self._values = self._values, None
        agen, self._agen = self._agen, None
        close = getattr(values, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # a step past the timeout still runs it, in a helper thread
                pass
        if agen is not None:
            loop = self._loop or asyncio.new_event_loop()
            _on_loop(loop, agen.aclose())
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def __repr__(self) -> str:
        return f"<squall.Stream task={self.task_id} inline {'closed' if self._closed else 'open'}>"


def _on_loop(loop: asyncio.AbstractEventLoop, awaitable: Any) -> Any:
    """Run ``awaitable`` on the stream's own loop (in a helper thread if this thread runs
    another loop already)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return loop.run_until_complete(awaitable)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="squall-inline") as pool:
        return pool.submit(loop.run_until_complete, awaitable).result()


def _nothing(frames: list[Any]) -> None:
    """An inline stream sends nothing (no acknowledgements: there is no worker)."""
