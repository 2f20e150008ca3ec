"""``squall.Executor``: a ``concurrent.futures.Executor`` that runs calls on squall workers."""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import datetime
import functools
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from squall import functions, protocol, serialization
from squall import options as task_options
from squall.client._core import Call, ClientCore, Driver, Withdrawal
from squall.client.background import BackgroundMethods, json_options
from squall.client.catalog import CatalogMethods
from squall.client.embedded import LocalCluster
from squall.client.future import Future
from squall.client.operator import OperatorMethods
from squall.client.schedules import ScheduleMethods
from squall.client.stream import DEFAULT_WINDOW, Stream
from squall.client.sync import ThreadDriver
from squall.client.view import UNSET, ExecutorView, RetryOn, _Unset, merged
from squall.config import check_client_policy, validate_address
from squall.errors import (
    DependencyFailed,
    ExecutorShutdown,
    StartupError,
    UsageError,
    WorkerLost,
)
from squall.log import get_logger
from squall.options import TaskOptions
from squall.protocol import Kind
from squall.serialization import DependencyRef

T = TypeVar("T")
P = ParamSpec("P")

log = get_logger(__name__)

#: Calls pickled per hand-over to the I/O thread in ``map``: big enough to batch, small enough
#: that the first tasks start while the rest are still being pickled.
MAP_BATCH = 1000

#: the wire counts a task's dependencies in 16 bits
MAX_DEPENDENCIES = 65_535

#: closing (or exiting) while the router has been silent this long: give its tasks up
ROUTER_GONE_AFTER = 60.0
#: seconds of waiting for pending tasks at shutdown before saying so in the log
SLOW_SHUTDOWN_NOTICE = 10.0

#: containers whose elements may be futures to wait for
_WALKED = frozenset({list, tuple, dict})
#: argument types that are never futures
_ATOMIC = frozenset({int, float, str, bytes, bool, type(None)})

#: sessions not closed yet: each is finished (its pending work done) at interpreter exit
_sessions: set[_Session] = set()


class ExecutorForked(UsageError):
    """An Executor was used in a process forked after it was made.

    Its sockets, I/O thread and embedded processes belong to the parent: in the child they
    would hang forever, silently. Make the Executor after the fork (in each gunicorn or
    multiprocessing worker) instead.
    """


def _forget_sessions_in_child() -> None:
    """In a forked child: the parent's sessions are not this process's to wait for or close
    (at exit, or when their Executor is collected), so mark them ended and forget them."""
    for session in _sessions:
        session.ended = True
    _sessions.clear()


os.register_at_fork(after_in_child=_forget_sessions_in_child)


@atexit.register
def _finish_all() -> None:
    """At interpreter exit, let pending work finish, then stop, as the standard executors do:
    only ``shutdown(cancel_futures=True)`` drops queued work."""
    for session in list(_sessions):
        session.wait_then_close()


class _Session:
    """What an :class:`Executor` runs: its core, I/O driver and embedded cluster.

    Kept apart from the Executor and never referring to it: the I/O thread reaches the core,
    the pending futures and this, but not the Executor, so an Executor nobody holds is
    collected, and its finalizer ends what it started once the work it took is done.
    """

    def __init__(self, core: ClientCore, cluster: LocalCluster | None) -> None:
        self.core = core
        self.cluster = cluster
        self.driver: Driver | None = None
        #: guards ``ended`` against sends: nothing is sent once the driver may be closing
        self._lock = threading.Lock()
        self.ended = False
        self._closer: threading.Thread | None = None
        _sessions.add(self)

    def send(self, frames: list[Any]) -> bool:
        """Send a message naming tasks (after their SUBMITs) unless the driver is closed;
        return whether it was queued."""
        with self._lock:
            if self.ended or self.driver is None:
                return False
            if self.core.add_after(frames):
                self.driver.wake()
            return True

    def cancel_remote(self, task_id: int) -> None:
        """A stream was closed or a running task interrupted here: forget it, tell the router
        (CANCEL: its worker stops it)."""
        self.core.forget(task_id)
        self.send(protocol.encode_cancel([task_id]))

    def withdraw(self, futures: Iterable[Future[Any]], wait: bool) -> Withdrawal | None:
        """Ask the router to drop these tasks if no worker has them yet, in one message.

        With ``wait``, wait for its answer (when this thread may block: see
        :meth:`ClientCore.caller_may_wait`); without, the answer cancels the futures of the
        dropped tasks when it comes. Returns the request (None: nothing to ask).
        """
        with self._lock:
            if self.ended or self.driver is None:  # closed: every future has its outcome
                return None
            request, wake = self.core.withdraw(futures)
            if wake:
                self.driver.wake()
        if request is not None and wait and self.core.caller_may_wait():
            self.core.wait_for(request)
        return request

    def withdraw_future(self, future: Future[Any]) -> bool:
        """``Future.cancel()`` for a pending future: True only if the router dropped it.

        Where the caller may not wait (the I/O thread, an event loop) the answer is False at
        once, even if the router's answer happens to be in already: the future is cancelled
        when it is handled, and the caller must not be told sometimes one, sometimes the other.
        """
        if not self.core.caller_may_wait():
            self.withdraw([future], wait=False)
            return False
        self.withdraw([future], wait=True)
        return future.cancelled()

    def cancel_all(self) -> None:
        """``shutdown(cancel_futures=True)``: withdraw every pending future at once (one
        message, one wait) and close every stream."""
        targets = self.core.targets(background=False)
        for stream in [t for t in targets if isinstance(t, Stream)]:
            stream.close()
        self.withdraw([t for t in targets if isinstance(t, Future)], wait=True)

    def wait_then_close(self) -> None:
        """Wait until no future is pending, then close. Called in the I/O thread (where
        nothing could resolve them), hands the waiting to another thread instead."""
        if threading.current_thread() is self.core.io_thread:
            self.close_when_done()
            return
        told = False
        while futures := [t for t in self.core.targets(background=False) if isinstance(t, Future)]:
            _, not_done = concurrent.futures.wait(futures, SLOW_SHUTDOWN_NOTICE)
            silent = self.driver.silent_for() if self.driver is not None else 0.0
            if not_done and silent > ROUTER_GONE_AFTER:
                # Nobody can finish them: waiting on would hang the process at exit forever.
                self.core.fail_all(
                    WorkerLost(
                        f"the router has not answered for {silent:.0f} s; the executor closed "
                        "without the outcomes of these tasks"
                    )
                )
                break
            if not_done and not told:
                told = True  # at exit above all, a silent wait would look like a hang
                log.warning(
                    "waiting for pending tasks before closing the executor; "
                    "shutdown(cancel_futures=True) drops those not started",
                    pending=len(not_done),
                )
        self.close()

    def close_when_done(self) -> None:
        """Close once the pending futures are done, without waiting here: a thread waits.

        Not a daemon thread, so the interpreter waits for it (and so for the work) at exit,
        as it does for a ThreadPoolExecutor's threads.
        """
        with self._lock:
            if self.ended or self._closer is not None:
                return
            self._closer = threading.Thread(
                target=self.wait_then_close, name="squall-shutdown", daemon=False
            )
        try:
            self._closer.start()
        except RuntimeError:  # the interpreter is exiting already: _finish_all waits instead
            pass

    def close(self) -> None:
        """Close now: the driver, then whatever is still pending (it ends with
        ExecutorShutdown), then the embedded router and workers."""
        with self._lock:
            if self.ended:
                return
            self.ended = True
        if self.driver is not None:
            self.driver.close()
        self.core.fail_all(ExecutorShutdown("the executor was shut down before the task ended"))
        if self.cluster is not None:
            self.cluster.stop()
        _sessions.discard(self)


def _plain(options: TaskOptions | None) -> TaskOptions | None:
    """``options`` for a plain task (``submit``, ``map``, ``stream``): a unique ``key`` makes
    sense only for a background task, which outlives its caller.

    Raises:
        UsageError: ``key`` was given.
    """
    if options is not None and options.key is not None:
        raise UsageError(
            f"key={options.key!r} is for background tasks: use ex.options(key=...).enqueue()"
        )
    return options


def _apply_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    return [fn(*args) for args in chunk]


class Executor(
    BackgroundMethods,
    ScheduleMethods,
    CatalogMethods,
    OperatorMethods,
    concurrent.futures.Executor,
):
    """Run Python callables on squall workers.

    With no address, starts the embedded default: a private router and one worker node as
    subprocesses on this machine, stopped again by :meth:`shutdown`. An executor dropped
    without ``shutdown()``, or still open at interpreter exit, first finishes the work it
    took, then stops likewise.

    Args:
        address: a running router's address (``tcp://host:port``); None for the embedded default.
        processes: embedded default only: worker processes (default: number of cores).
        concurrency: embedded default only: tasks at once per worker process.
        connect_timeout: seconds to wait for the router (and embedded workers) to be ready.
        stream_window: values a stream may have unread before its remote generator pauses.
        max_pending: tasks without an outcome yet; ``submit`` waits while there are this many,
            so a fast producer is slowed instead of filling memory.
        auth: directory with the router's public key ``router.key`` and this client's key pair
            ``KEY.key_secret`` (CurveZMQ; see ``squall keygen``). Default: ``SQUALL_AUTH``.
        key: the name of this client's key pair in ``auth``.
        insecure: allow a non-loopback ``address`` without ``auth``. Whoever answers there
            sees every task and can run code in this process (results are unpickled here), so
            without it such an address is refused.
        worker_group: run this client's tasks only on workers whose key is in that group
            (a folder of the router's auth directory, ``workers/GROUP/*.key``): the workers
            that run its tasks can run code in this process, so a client may choose them.

        inline: run every task in the calling process, at submit, for tests (see
            :mod:`squall.client.inline`): same pickling, options and errors, no processes.
            Default: ``SQUALL_INLINE=1`` in the environment makes every Executor inline.

    Raises:
        SquallError: ``address`` is beyond this machine and neither ``auth`` nor ``insecure``
            is given (raised at once, before connecting).
        StartupError: the router (or the embedded processes) did not come up in time.
    """

    def __new__(cls, *args: Any, inline: bool | None = None, **kwargs: Any) -> Executor:
        """An inline executor when asked (or ``SQUALL_INLINE`` says so), else this class."""
        if cls is Executor:
            from squall.client import inline as inline_mode

            if inline_mode.wanted(inline):
                return super().__new__(inline_mode.InlineExecutor)
        return super().__new__(cls)

    def __init__(
        self,
        address: str | None = None,
        *,
        processes: int | None = None,
        concurrency: int = 1000,
        connect_timeout: float = 30.0,
        stream_window: int = DEFAULT_WINDOW,
        max_pending: int = 100_000,
        auth: str | None = None,
        key: str = "client",
        insecure: bool = False,
        worker_group: str | None = None,
        inline: bool | None = None,
    ) -> None:
        if stream_window < 1:
            raise ValueError("stream_window must be at least 1")
        auth = auth if auth is not None else os.environ.get("SQUALL_AUTH") or None
        if address is not None:
            check_client_policy(validate_address(address), auth, insecure)
        self.stream_window = stream_window
        self._closed = False
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._core = ClientCore(max_pending)
        self._cluster: LocalCluster | None = None
        if address is None:
            self._cluster = LocalCluster(processes or os.cpu_count() or 1, concurrency)
        self._session = _Session(self._core, self._cluster)
        # Dropped without shutdown(): finish the pending work, then stop, as shutdown(wait=
        # False) does. (Not at exit: _finish_all does that, waiting in the main thread.)
        self._finalizer = weakref.finalize(self, self._session.close_when_done)
        self._finalizer.atexit = False
        # One deadline for the whole start (cluster, router, workers): connect_timeout is what
        # the caller waits at most, not the time each step may take.
        deadline = time.monotonic() + connect_timeout
        try:
            if self._cluster is not None:
                address = self._cluster.start()
            assert address is not None
            self.address = validate_address(address)
            self._connect(auth, key, worker_group or "", deadline, connect_timeout)
        except BaseException:
            self._closed = True
            self._finalizer.detach()
            self._session.close()
            raise

    def _connect(
        self, auth: str | None, key: str, group: str, deadline: float, timeout: float
    ) -> None:
        """Start the I/O driver and wait for the router (and the embedded workers) until
        ``deadline``. (AsyncExecutor's executor brings its asyncio driver, and awaits.)"""
        driver = ThreadDriver(self.address, self._core, auth, key, group)
        self._driver: Driver = driver
        self._session.driver = driver
        driver.start(max(0.1, deadline - time.monotonic()))
        if self._cluster is not None:
            self._wait_for_workers(self._cluster.processes, deadline, timeout)

    def _wait_for_workers(self, count: int, deadline: float, timeout: float) -> None:
        while True:
            assert self._cluster is not None
            self._cluster.check()
            left = deadline - time.monotonic()
            try:
                if self._driver.stats(max(0.1, min(left, 5.0)))["workers"] >= count:
                    return
            except concurrent.futures.TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise StartupError(f"{count} embedded worker processes not ready in {timeout:g} s")
            time.sleep(0.05)

    # -- concurrent.futures.Executor --------------------------------------------------------

    @overload
    def submit(self, fn: str, /, *args: Any, **kwargs: Any) -> Future[Any]: ...

    @overload
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]: ...

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; ``fn`` may be a function's name (see
        "Functions by name" in the README): a worker serving it, or the router's published
        version, runs it.

        ``squall.Future`` arguments (at top level, or inside a list, tuple or dict argument)
        make the task wait for them and receive their values, which go from worker to worker
        through the router without coming back here. A generator function's values are
        collected into a list (use :meth:`stream` to receive them as they are yielded); an
        ``async def`` function is awaited on the worker.

        squall keeps four keywords for itself: ``timeout`` (seconds; past it the task is
        interrupted and raises ``squall.TaskTimeout``), ``retries`` and ``retry_on`` (run again
        on these exception types, default any Exception; never on others), ``backoff`` (first
        pause between attempts, doubling with jitter). For a function with arguments of those
        names, give the options with :meth:`options` instead: ``ex.options(timeout=5).submit(
        fn, timeout=1)`` passes ``timeout=1`` to ``fn``. Typed as the standard library types
        ``Executor.submit`` (``ParamSpec``), so a type checker checks ``args`` and ``kwargs``
        against ``fn``: it flags these four unless ``fn`` takes them too (they are taken at
        run time all the same; ``# type: ignore[call-overload]`` on such a call).

        Raises:
            SerializationError: ``fn`` or an argument cannot be pickled (named in the message);
                nothing was sent.
            ExecutorShutdown: the executor was shut down.
            TypeError, ValueError: a bad option (see :meth:`options`).
        """
        return self._submit_with(fn, args, kwargs, task_options.from_kwargs(kwargs))

    def _submit_with(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None,
    ) -> Future[T]:
        """``submit`` with the task's options apart from ``fn``'s keyword arguments."""
        self._check_open()
        route, options = task_options.split(_plain(options))
        fn_hash, body, name = functions.target(fn)
        route = functions.named_route(route, name)
        future: Future[T] = self._new_future()
        linked, linked_kw, deps, failed = self._link_dependencies(args, kwargs)
        if failed is not None:
            future.set_exception(failed)
            return future
        frames = serialization.dumps_call(linked, linked_kw, options)
        self._enqueue(fn_hash, body, [Call(frames, future, deps=deps, route=route)])
        return future

    def submit_json(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        options: TaskOptions | None = None,
    ) -> Future[Any]:
        """Call the function ``name`` with JSON arguments, as clients in other languages do
        (through the HTTP gateway, which calls this).

        The worker decodes the arguments, and encodes the result (or each value a generator
        yields, with :meth:`stream_json`) as JSON: the future's result is the decoded JSON. A
        failure is ``squall.TaskFailed`` with the remote type, message and traceback as text;
        nothing is unpickled, here or in the router. ``options``: queue, priority, delay,
        expires; timeout, retries and backoff (``retry_on`` is any Exception).

        Raises:
            ValueError: a bad name.
            SerializationError: an argument JSON cannot encode, named by its type.
        """
        self._check_open()
        future: Future[Any] = self._new_future()
        fn_hash, call = self._json_call(name, args, kwargs, options, future, Kind.JSON_CALL)
        self._enqueue(fn_hash, b"", [call])
        return future

    def stream_json(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        options: TaskOptions | None = None,
    ) -> Stream[Any]:
        """As :meth:`submit_json`, for a generator function: each value it yields, decoded
        from JSON, as it comes."""
        self._check_open()
        stream: Stream[Any] = Stream(self.stream_window, self._driver.send)
        stream.canceller = self._session.cancel_remote
        fn_hash, call = self._json_call(name, args, kwargs, options, stream, Kind.JSON_STREAM)
        self._enqueue(fn_hash, b"", [call])
        return stream

    def enqueue_json(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        options: TaskOptions | None = None,
        keep: float | None = None,
    ) -> Future[Any]:
        """As :meth:`submit_json`, as a background task kept by the router (see
        :meth:`enqueue`); ``options.key`` makes it unique."""
        calls = [(tuple(args), dict(kwargs or {}))]
        return self._enqueue_calls(name, calls, keep, options or task_options.DEFAULT, True)[0]

    def _json_call(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        options: TaskOptions | None,
        target: Future[Any] | Stream[Any],
        kind: Kind,
    ) -> tuple[bytes, Call]:
        """The name's hash and the call to send: one JSON frame, the name in its route."""
        fn_hash, _, name = functions.target(functions.check_name(name))
        route, _ = task_options.split(_plain(options))
        frame = functions.encode_json_call(args, dict(kwargs or {}), json_options(options))
        target.loads = functions.loads_json
        window = self.stream_window if kind == Kind.JSON_STREAM else 0
        call = Call([frame], target, kind, window, route=functions.named_route(route, name))
        return fn_hash, call

    def stream(
        self, fn: Callable[P, Iterable[T] | AsyncIterable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Stream[T]:
        """Run a generator (or async generator) function on a worker; iterate its values as
        they are yielded.

        The remote generator pauses while ``stream_window`` values are unread. Breaking out,
        ``close()`` or dropping the stream closes the remote generator. The generator's
        exception is raised where it happened, after the values yielded before it.

        Options as for :meth:`submit`: ``timeout`` bounds the whole generator run, from the
        call to its end, pauses for unread values included (past it the stream raises
        ``squall.TaskTimeout`` after the values yielded before); ``retries`` runs the
        generator again only if it failed before yielding anything, so no value is repeated.

        Raises:
            SerializationError: as for :meth:`submit`.
        """
        return self._stream_with(fn, args, kwargs, task_options.from_kwargs(kwargs))

    def _stream_with(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None,
    ) -> Stream[Any]:
        """``stream`` with the task's options apart from ``fn``'s keyword arguments."""
        self._check_open()
        route, options = task_options.split(_plain(options))
        fn_hash, body, name = functions.target(fn)
        route = functions.named_route(route, name)
        stream: Stream[Any] = Stream(self.stream_window, self._driver.send)
        stream.canceller = self._session.cancel_remote
        linked, linked_kw, deps, failed = self._link_dependencies(args, kwargs)
        if failed is not None:
            stream._squall_fail(failed)
            return stream
        frames = serialization.dumps_call(linked, linked_kw, options)
        call = Call(frames, stream, Kind.STREAM, self.stream_window, deps, route=route)
        self._enqueue(fn_hash, body, [call])
        return stream

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        ordered: bool = True,
        progress: bool = False,
    ) -> Iterator[T]:
        """Like ``concurrent.futures.Executor.map``: every call is submitted now, unless
        ``buffersize`` bounds how far ahead of the reader the calls run.

        If the iterator is closed, dropped, or raises (a task's exception, or the
        ``TimeoutError``), the calls not started yet are withdrawn: they never run.

        Task options (a time limit for each task, retries) come from a view:
        ``ex.options(timeout=5, retries=2).map(fn, items)``. ``timeout`` here is the
        ``concurrent.futures`` one, for the whole map; the option's is for each task.

        Args:
            timeout: seconds from now until every result must have arrived (else
                ``TimeoutError``); not a time limit for each task (see above).
            chunksize: calls per task (fewer, larger tasks).
            buffersize: at most this many tasks submitted and not yet yielded (Python 3.14's
                ``map`` option): the iterables are read as the results are, so an endless
                one works; None submits everything at once.
            ordered: results in input order (default) or as tasks complete.
            progress: show a progress bar (tqdm) when stderr is a terminal.

        Raises:
            TypeError: ``buffersize`` is neither an integer nor None.
            ValueError: ``chunksize`` or ``buffersize`` is below 1.
        """
        return self._map_with(
            fn,
            iterables,
            None,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
            progress=progress,
        )

    def _map_with(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        options: TaskOptions | None,
        *,
        timeout: float | None,
        chunksize: int,
        buffersize: int | None,
        ordered: bool,
        progress: bool,
    ) -> Iterator[T]:
        """``map`` with task ``options`` for each task (each chunk with ``chunksize``)."""
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize > 1:
            chunks = _chunks(zip(*iterables, strict=False), chunksize)
            nested = self._map_with(
                functools.partial(_apply_chunk, fn),
                (chunks,),
                options,
                timeout=timeout,
                chunksize=1,
                buffersize=buffersize,
                ordered=ordered,
                progress=progress,
            )
            return itertools.chain.from_iterable(nested)
        end = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables, strict=False)
        if buffersize is None:
            futures = collections.deque(self._submit_calls(fn, calls, options))
            more = None
        else:
            first = itertools.islice(calls, buffersize)
            futures = collections.deque(self._submit_calls(fn, first, options))
            more = _Refill(self, fn, calls, options)
        if ordered:
            results = _in_order(futures, end, more, self._session)
        else:
            results = _as_done(set(futures), end, more, self._session)
        if progress:
            return _with_progress(results, None if more is not None else len(futures))
        return results

    def _submit_many(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        options: TaskOptions | None = None,
    ) -> list[Future[T]]:
        """Submit ``fn`` over zipped iterables, pickling the function once."""
        return self._submit_calls(fn, zip(*iterables, strict=False), options)

    def _submit_calls(
        self,
        fn: Callable[..., T],
        calls: Iterable[tuple[Any, ...]],
        options: TaskOptions | None = None,
    ) -> list[Future[T]]:
        """Submit ``fn(*args)`` for each ``args`` of ``calls``, pickling the function once;
        each task with ``options``."""
        self._check_open()
        route, options = task_options.split(_plain(options))
        fn_hash, body, name = functions.target(fn)
        route = functions.named_route(route, name)
        futures: list[Future[T]] = []
        batch: list[Call] = []
        for args in calls:
            future: Future[T] = self._new_future()
            futures.append(future)
            args, _, deps, failed = self._link_dependencies(args, {})
            if failed is not None:
                future.set_exception(failed)
                continue
            frames = serialization.dumps_call(args, {}, options)
            batch.append(Call(frames, future, deps=deps, route=route))
            if len(batch) >= MAP_BATCH:
                self._enqueue(fn_hash, body, batch)
                batch = []
        if batch:
            self._enqueue(fn_hash, body, batch)
        return futures

    def cancel(self, future: Future[Any] | str, interrupt: bool = False) -> bool:
        """Cancel ``future``; with ``interrupt``, also stop it if a worker already runs it.

        ``future.cancel()`` follows concurrent.futures: a task that may have started is not
        cancelled, and True means it never ran (it costs a round trip to the router). With
        ``interrupt=True`` a running task's greenlet is killed on its worker (``finally``
        blocks run) and the future raises ``CancelledError``. Returns whether the task was
        stopped.

        Given a background task's id (a str) instead, cancels that task wherever it was
        enqueued: a queued one never runs, a running one is stopped; False if it had
        finished (``squall.TaskNotFound`` for an id the router does not keep).
        """
        if isinstance(future, str):
            return self.cancel_by_id(future)
        if future.cancel():
            return True
        if not interrupt or future.done():
            return False
        self._session.cancel_remote(future.task_id)
        try:
            future.set_exception(concurrent.futures.CancelledError("interrupted on its worker"))
        except concurrent.futures.InvalidStateError:  # the outcome won the race
            return False
        return True

    def _new_future(self) -> Future[Any]:
        future: Future[Any] = Future()
        future.owner = self._core
        future.withdrawer = self._session.withdraw_future
        return future

    def _link_dependencies(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], tuple[int, ...], BaseException | None]:
        """Swap ``squall.Future`` arguments for markers the worker fills with their values.

        A future already resolved here is replaced by its value (it is here anyway); a failed
        or cancelled one fails the new task at once. Returns (args, kwargs, dependency task
        ids, failure).
        """
        for value in (*args, *kwargs.values()) if kwargs else args:
            kind = type(value)
            if kind in _WALKED or (kind not in _ATOMIC and isinstance(value, Future)):
                break
        else:  # the common case, checked in a plain loop: nothing to link
            return args, kwargs, (), None
        deps: list[int] = []
        refs: dict[int, DependencyRef] = {}
        failures: list[BaseException] = []

        def swap(obj: Any, depth: int) -> Any:
            if isinstance(obj, Future):
                return link(obj)
            kind = type(obj)
            if depth >= 1 or kind not in _WALKED:
                return obj
            if kind is dict:
                return {k: swap(v, depth + 1) for k, v in obj.items()}
            return kind(swap(x, depth + 1) for x in obj)

        def link(future: Future[Any]) -> Any:
            if future.owner is not self._core:
                raise ValueError(
                    f"{future!r} belongs to another executor; pass its .result() instead"
                )
            if future.done():
                if future.cancelled():
                    failures.append(
                        DependencyFailed(f"dependency task {future.task_id} was cancelled")
                    )
                    return None
                error = future.exception()
                if error is not None:
                    failure = DependencyFailed(
                        f"dependency task {future.task_id} failed: {type(error).__name__}: {error}"
                    )
                    failure.__cause__ = error
                    failures.append(failure)
                    return None
                return future.result()
            if id(future) not in refs:
                refs[id(future)] = DependencyRef(len(deps), future.task_id)
                deps.append(future.task_id)
            return refs[id(future)]

        new_args = tuple(swap(a, 0) for a in args)
        new_kwargs = {k: swap(v, 0) for k, v in kwargs.items()}
        if len(deps) > MAX_DEPENDENCIES:
            raise ValueError(
                f"a task can wait for at most {MAX_DEPENDENCIES:,} futures, not {len(deps):,}: "
                "combine them in stages (a tree of fan-ins)"
            )
        return new_args, new_kwargs, tuple(deps), (failures[0] if failures else None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work. Pending tasks still run and their futures resolve, as with the
        standard executors; then the connection (and the embedded router and workers) close.

        Args:
            wait: wait here until the pending tasks are done and everything is closed.
                Without it this returns at once, and the interpreter waits for them at exit.
            cancel_futures: first withdraw every task no worker has started (those futures
                are cancelled; the started ones still finish) and close every stream.
        """
        with self._lock:
            first, self._closed = not self._closed, True
        if first:
            self._finalizer.detach()
            if cancel_futures:
                self._session.cancel_all()
        if wait:
            self._session.wait_then_close()
        else:
            self._session.close_when_done()

    # -- squall extras ----------------------------------------------------------------------

    def options(
        self,
        *,
        timeout: float | None | _Unset = UNSET,
        retries: int | _Unset = UNSET,
        retry_on: RetryOn | _Unset = UNSET,
        backoff: float | _Unset = UNSET,
        queue: str | _Unset = UNSET,
        priority: int | _Unset = UNSET,
        delay: float | None | _Unset = UNSET,
        at: datetime.datetime | None | _Unset = UNSET,
        expires: float | datetime.datetime | None | _Unset = UNSET,
        key: str | None | _Unset = UNSET,
    ) -> ExecutorView[Executor]:
        """A view of this executor whose ``submit``, ``map`` and ``stream`` give each task
        these options, and pass every keyword argument to the function untouched (the way for
        functions that take a ``timeout`` or ``retries`` of their own). Views chain:
        ``ex.options(timeout=1).options(retries=2)`` has both.

        Args:
            timeout: seconds each attempt may run (a stream: its whole run); past it the task
                is interrupted and fails with ``squall.TaskTimeout``. None: no limit.
            retries: times to run a failed task again (a stream: only if it failed before
                yielding anything).
            retry_on: the ``Exception`` classes worth a retry (default: any ``Exception``).
            backoff: seconds before the first retry; doubling, with jitter, up to 30 s.
            queue: the named queue the task waits in (default ``"default"``); only workers
                serving it (``squall worker --queues``) run it.
            priority: higher first within its queue, FIFO among equals (default 0).
            delay: seconds before the task may start; the router holds it until then (state
                ``scheduled``), however long, and runs it once.
            at: instead of ``delay``, a timezone-aware datetime (a naive one is refused).
            expires: seconds (or an aware datetime) past which a task not yet started fails
                with ``squall.TaskExpired`` and never runs.
            key: ``enqueue`` only: a unique key; while a task enqueued with it is kept
                (queued, running, or finished within its time to live), enqueueing it again
                gives that task's future instead of a new task.

        Raises:
            TypeError: a value of the wrong type (``retries`` not an int, ``retry_on`` not
                exception classes...), at this call.
            ValueError: a timeout that is not positive, negative retries or backoff.
        """
        given = dict(locals())  # the options, exactly as passed (nothing else is bound yet)
        del given["self"]
        return ExecutorView(self, merged(TaskOptions(), **given))

    def stats(self) -> dict[str, Any]:
        """The router's counters and this client's, for monitoring and tests."""
        stats = self._driver.stats()
        stats["client_bodies_sent"] = self._core.bodies_sent
        stats["client_pending"] = len(self._core.pending)
        if self._cluster is not None:
            stats["embedded_pids"] = self._cluster.pids
        return stats

    def _check_open(self) -> None:
        if self._pid != os.getpid():
            raise ExecutorForked(
                f"this Executor was made in process {self._pid}, before os.fork(); it cannot "
                f"work in process {os.getpid()}: create the Executor after the fork, in each "
                "worker process (gunicorn --preload: in a post_fork hook or on first use)"
            )
        if self._closed:
            raise ExecutorShutdown("cannot schedule new tasks after shutdown")

    def _enqueue(self, fn_hash: bytes, body: bytes, calls: list[Call]) -> None:
        wake = self._core.add(fn_hash, body, calls)
        if self._session.ended:  # shut down meanwhile, by another thread: nobody will send
            self._core.fail_all(ExecutorShutdown("the executor was shut down during submit"))
        elif wake:
            self._driver.wake()

    def __repr__(self) -> str:
        where = "embedded" if self._cluster else self.address
        return f"<squall.Executor {where} pending={len(self._core.pending)}>"


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class _Refill(Generic[T]):
    """Submits ``map``'s next call as each result is taken (``buffersize``).

    Holds the executor weakly, as the standard ``map`` does: once it is collected (and is
    finishing the work it took), no more calls are submitted and the results end.
    """

    def __init__(
        self,
        executor: Executor,
        fn: Callable[..., T],
        calls: Iterator[tuple[Any, ...]],
        options: TaskOptions | None = None,
    ):
        self._executor = weakref.ref(executor)
        self._fn = fn
        self._calls = calls
        self._options = options

    def __call__(self) -> Future[T] | None:
        executor = self._executor()
        if executor is None:
            return None
        args = next(self._calls, None)
        return None if args is None else executor._submit_calls(self._fn, [args], self._options)[0]


def _remaining(end: float | None) -> float | None:
    return None if end is None else max(0.0, end - time.monotonic())


def _in_order(
    futures: collections.deque[Future[T]],
    end: float | None,
    more: _Refill[T] | None,
    session: _Session,
) -> Iterator[T]:
    """Yield results in submission order; withdraw what is left if the caller stops early
    (or a result raises, the timeout included)."""
    try:
        while futures:
            if more is not None and (future := more()) is not None:
                futures.append(future)
                del future  # the deque holds it; a local would keep its result alive
            yield _next_result(futures, end)
    finally:
        session.withdraw(futures, wait=False)


def _next_result(futures: collections.deque[Future[T]], end: float | None) -> T:
    """The oldest future's result, keeping no reference to it (it holds the result) once
    returned. On the map's timeout the future stays in ``futures``, to be withdrawn."""
    future = futures.popleft()
    try:
        return future.result(_remaining(end))
    except BaseException:
        if not future.done():  # the map's timeout, not the task's own TimeoutError
            futures.appendleft(future)
        raise
    finally:
        del future  # also breaks the cycle through a raised exception's traceback


def _as_done(
    pending: set[Future[T]], end: float | None, more: _Refill[T] | None, session: _Session
) -> Iterator[T]:
    """Yield results as tasks complete; withdraw what is left if the caller stops early."""
    try:
        if more is None:
            completed = cast(
                Iterator[Future[T]], concurrent.futures.as_completed(pending, _remaining(end))
            )
            while pending:
                yield _take(pending, next(completed))
            return
        while pending:
            done = cast(
                set[Future[T]],
                concurrent.futures.wait(pending, _remaining(end), FIRST_COMPLETED).done,
            )
            if not done:
                raise concurrent.futures.TimeoutError(f"{len(pending)} futures unfinished")
            while done:
                if (future := more()) is not None:
                    pending.add(future)
                    del future
                yield _take(pending, done.pop())
    finally:
        session.withdraw(pending, wait=False)


def _take(pending: set[Future[T]], future: Future[T]) -> T:
    """A completed future's result; ``pending`` lets go of the future first."""
    pending.discard(future)
    try:
        return future.result()
    finally:
        del future


def _with_progress(results: Iterator[T], total: int | None) -> Iterator[T]:
    """A progress bar over ``results`` (see :func:`progress_bar`)."""
    with progress_bar(total) as bar:
        for result in results:
            bar.update(1)
            yield result


def progress_bar(total: int | None) -> Any:
    """A tqdm bar for ``map(progress=True)``: a widget in a notebook, text on a terminal,
    nothing where neither can be drawn (a pipe, a log file)."""
    if _in_notebook():
        # the widget (text if ipywidgets is missing)
        from tqdm.auto import tqdm as auto_bar  # type: ignore[import-untyped]

        return auto_bar(total=total, unit="task")
    from tqdm import tqdm

    return tqdm(total=total, unit="task", disable=not sys.stderr.isatty())


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel: its output goes to a frontend that draws,
    though stderr is no terminal. (IPython is only looked up, never imported.)"""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
