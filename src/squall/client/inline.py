"""Inline mode: ``Executor(inline=True)`` runs each task in the calling process, at submit.

For unit tests, as Celery's ``task_always_eager`` and Dask's synchronous scheduler are: no
router, no worker processes, no sockets, so ``pdb`` stops in a task and ``unittest.mock.patch``
reaches it. What would differ on a worker is kept: the function and its arguments make the
same pickling round trip (an unpicklable argument fails at submit, naming it), the result and
the exception make it back (an exception that cannot travel is a ``TaskFailed``), and the
task's options (timeout, retries, retry_on, backoff) apply as on a worker.

The function is pickled too (one that cannot travel fails at submit), but the original object
is called, not its unpickled copy: a copy of a function from a test module carries the globals
of its first submit, so ``mock.patch`` of a module attribute, and ``pdb``'s source lines, would
miss it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import os
import threading
import time
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

from squall import options as task_options
from squall import serialization
from squall.client._core import ClientCore
from squall.client.executor import Executor, _Session
from squall.client.future import Future
from squall.client.stream import _END, DEFAULT_WINDOW, Stream
from squall.errors import ExecutorShutdown, SerializationError, TaskTimeout
from squall.options import TaskOptions

T = TypeVar("T")
P = ParamSpec("P")

#: ``SQUALL_INLINE`` values that make every ``Executor()`` of the process inline
_TRUE = ("1", "true", "yes", "on")

_NO_OPTIONS = TaskOptions()


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

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` now; return its finished future.

        Raises:
            SerializationError: the function or an argument cannot be pickled (named).
        """
        self._check_open()
        options = task_options.from_kwargs(kwargs)
        serialization.dumps_function(fn)  # a function that cannot travel fails here too
        future: Future[T] = self._new_future()
        linked, linked_kw, _, failed = self._link_dependencies(args, kwargs)
        if failed is not None:
            future.set_exception(failed)
            return future
        self._run(future, fn, serialization.dumps_call(linked, linked_kw, options))
        return future

    def _submit_calls(
        self, fn: Callable[..., T], calls: Iterable[tuple[Any, ...]]
    ) -> list[Future[T]]:
        """``map``'s submits: each call runs as it is read from ``calls``."""
        self._check_open()
        serialization.dumps_function(fn)
        futures: list[Future[T]] = []
        for args in calls:
            future: Future[T] = self._new_future()
            futures.append(future)
            linked, _, _, failed = self._link_dependencies(args, {})
            if failed is not None:
                future.set_exception(failed)
                continue
            self._run(future, fn, serialization.dumps_call(linked, {}))
        return futures

    def stream(
        self, fn: Callable[P, Iterable[T] | AsyncIterable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Stream[T]:
        """Call ``fn`` now; its generator runs as the returned stream is read."""
        self._check_open()
        task_options.from_kwargs(kwargs)
        serialization.dumps_function(fn)
        stream: InlineStream[T] = InlineStream(self.stream_window)
        stream.task_id = next(self._ids)
        linked, linked_kw, _, failed = self._link_dependencies(args, kwargs)
        if failed is not None:
            stream._squall_fail(failed)
            return stream
        frames = serialization.dumps_call(linked, linked_kw, None)
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
            value = _round_trip(run_task(fn, args, kwargs, options or _NO_OPTIONS))
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

    def cancel(self, future: Future[Any], interrupt: bool = False) -> bool:
        """False: an inline task has always run by the time anyone can cancel it."""
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
    """Call ``fn`` with the worker's rules: retries on ``retry_on``, each attempt under the
    timeout; generators drained into a list, coroutines run to completion."""
    retry = 0
    while True:
        try:
            result = _attempt(fn, args, kwargs, options.timeout)
            break
        except options.retry_on:
            if retry >= options.retries:
                raise
            retry += 1
            time.sleep(options.pause(retry))
    if inspect.iscoroutine(result):
        return run_coroutine(_with_timeout(result, options.timeout))
    if inspect.isawaitable(result):
        return run_coroutine(_awaited(result))
    if inspect.isgenerator(result):
        return list(result)
    if inspect.isasyncgen(result):
        return run_coroutine(_drained(result))
    return result


def _attempt(fn: Any, args: Any, kwargs: Any, timeout: float | None) -> Any:
    """One call; with a timeout, in a helper thread so that the caller stops waiting at the
    deadline. A thread cannot be interrupted: the call runs on, its result unused, in a daemon
    thread that does not hold the process at exit."""
    if timeout is None:
        return fn(*args, **kwargs)
    outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def call() -> None:
        try:
            outcome.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=call, name="squall-inline-timeout", daemon=True).start()
    try:
        return outcome.result(timeout)
    except concurrent.futures.TimeoutError:
        if outcome.done():  # the task's own TimeoutError
            raise
        raise TaskTimeout(f"the task ran past its timeout of {timeout:g} s") from None


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion: ``asyncio.run``, or in a helper thread when this
    thread already runs an event loop (which must not be re-entered)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="squall-inline") as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _with_timeout(coroutine: Any, timeout: float | None) -> Any:
    try:
        return await asyncio.wait_for(coroutine, timeout)
    except asyncio.TimeoutError:
        if timeout is None:
            raise
        raise TaskTimeout(f"the task ran past its timeout of {timeout:g} s") from None


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
    """A :class:`Stream` whose generator runs in the reader's thread, one value per read."""

    def __init__(self, window: int) -> None:
        super().__init__(window, _nothing)
        self._values: Iterator[Any] | None = None
        self._agen: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None

    def start(self, fn: Any, call: tuple[Any, Any, Any]) -> None:
        """Call the generator function; a call that fails (or returns no iterable) fails the
        stream at its first read, as on a worker."""
        args, kwargs, _ = call
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = run_coroutine(_awaited(result))
        except BaseException as exc:
            self._failure = _travelled(exc)
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

    def _squall_fail(self, exc: BaseException) -> None:
        self._failure = exc

    def __next__(self) -> T:
        value = self._step(lambda: next(self._values) if self._values else self._async_step())
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
        if self._failure is not None or self._closed:
            return self._step(lambda: None)
        try:
            value = await self._agen.__anext__()
        except StopAsyncIteration:
            await self._agen.aclose()
            self._agen = None
            self._closed = True
            return _END
        except BaseException as exc:
            self._agen = None
            self._closed = True
            raise _travelled(exc) from None
        self.received += 1
        return _round_trip(value)

    def _async_step(self) -> Any:
        """The async generator's next value, from a synchronous reader."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            return _on_loop(self._loop, self._agen.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def _step(self, take: Callable[[], Any]) -> Any:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._closed = True
            raise failure
        if self._closed:
            return _END
        try:
            value = take()
        except StopIteration:
            self.close()
            return _END
        except BaseException as exc:
            self.close()
            raise _travelled(exc) from None
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
            close()
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
