"""``squall.AsyncExecutor``: the same client, driven by the running asyncio event loop.

Its executor is an :class:`Executor` (same core, pickling, futures, dependencies and streams)
whose I/O driver is :class:`~squall.client.asyncio_driver.AsyncioDriver`: the socket lives on
the event loop, so nothing here starts a thread, and outcomes are handed to futures in the
loop's own thread. What blocks in an :class:`Executor` is awaited here instead: the start
(the router's WELCOME, the embedded workers), ``stats()``, ``cancel()`` and ``aclose()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import itertools
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from squall.client import operator
from squall.client._core import WITHDRAW_TIMEOUT, Withdrawal
from squall.client.asyncio_driver import AsyncioDriver
from squall.client.background import (
    QUERY_TIMEOUT,
    TaskInfo,
    await_answer,
    await_held,
    calls_of,
    info_of,
)
from squall.client.catalog import FunctionInfo, functions_of
from squall.client.executor import MAP_BATCH, ROUTER_GONE_AFTER, SLOW_SHUTDOWN_NOTICE, Executor
from squall.client.future import Future, as_completed
from squall.client.stream import Stream
from squall.client.view import UNSET, AsyncExecutorView, RetryOn, _Unset, merged
from squall.errors import StartupError, Unavailable, WorkerLost
from squall.log import get_logger
from squall.options import TaskOptions

T = TypeVar("T")
P = ParamSpec("P")

log = get_logger(__name__)


class AsyncExecutor:
    """Run Python callables on squall workers from asyncio code.

    Args:
        address: a router's address, or None for the embedded default.
        **options: as for :class:`squall.Executor`.

    ::

        async with squall.AsyncExecutor() as ex:
            value = await ex.submit(fetch, url)
            async for result in ex.map(fetch, urls):
                ...
            async for item in ex.stream(generate, 10):
                ...

    ``submit`` never waits for room (``max_pending``) here: it runs in the loop, which alone
    would make room.
    """

    def __init__(self, address: str | None = None, **options: Any) -> None:
        self._address = address
        self._options = options
        self._executor: Executor | None = None

    async def start(self) -> AsyncExecutor:
        """Connect (or start the embedded default) without blocking the event loop."""
        if self._executor is None:
            from squall.client import inline

            if inline.wanted(self._options.get("inline")):  # no sockets, nothing to await
                self._executor = Executor(self._address, **self._options)
            else:
                executor = LoopExecutor(self._address, **self._options)
                await executor.started()
                self._executor = executor
        return self

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise RuntimeError("AsyncExecutor not started: use 'async with' or 'await start()'")
        return self._executor

    @overload
    def submit(self, fn: str, /, *args: Any, **kwargs: Any) -> Future[Any]: ...

    @overload
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]: ...

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """As :meth:`Executor.submit` (a function's name too); ``await`` the returned future."""
        return self.executor.submit(fn, *args, **kwargs)

    def stream(
        self, fn: Callable[P, Iterable[T] | AsyncIterable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Stream[T]:
        """As :meth:`Executor.stream`; use ``async for`` on the returned stream."""
        return self.executor.stream(fn, *args, **kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        ordered: bool = True,
        progress: bool = False,
    ) -> AsyncIterator[T]:
        """Submit every call now; ``async for`` over the results (in input order, or as they
        complete with ``ordered=False``); ``progress`` draws a bar as :meth:`Executor.map`
        does. ``timeout`` is the whole map's deadline (task options: :meth:`options`)."""
        return self._map_with(
            fn, iterables, None, timeout=timeout, ordered=ordered, progress=progress
        )

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
    ) -> AsyncExecutorView[AsyncExecutor]:
        """As :meth:`Executor.options`: a view whose ``submit``, ``map`` and ``stream`` give
        each task these options and pass every keyword argument to the function untouched.
        Checked here: a bad value raises ``TypeError`` or ``ValueError`` at this call."""
        given = dict(locals())  # the options, exactly as passed (nothing else is bound yet)
        del given["self"]
        return AsyncExecutorView(self, merged(TaskOptions(), **given))

    # -- what the options view calls ------------------------------------------------------

    def _submit_with(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None,
    ) -> Future[T]:
        return self.executor._submit_with(fn, args, kwargs, options)

    def _stream_with(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None,
    ) -> Stream[Any]:
        return self.executor._stream_with(fn, args, kwargs, options)

    def _map_with(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        options: TaskOptions | None,
        *,
        timeout: float | None,
        ordered: bool,
        progress: bool,
    ) -> AsyncIterator[T]:
        executor = self.executor
        if isinstance(executor, LoopExecutor):
            futures = executor.submit_all(fn, iterables, options)
        else:
            futures = executor._submit_calls(fn, zip(*iterables, strict=False), options)
        results = _results(futures, timeout, ordered, self._withdraw)
        return _with_progress(results, len(futures)) if progress else results

    def _withdraw(self, futures: list[Future[Any]]) -> None:
        if isinstance(self._executor, LoopExecutor):
            self._executor.withdraw(futures)

    async def cancel(self, future: Future[Any] | str, interrupt: bool = False) -> bool:
        """As :meth:`Executor.cancel`, awaited: the router's answer is awaited, not waited
        for. True means the task never ran, or with ``interrupt`` that it was stopped on its
        worker (its ``finally`` runs; the future raises ``CancelledError``). Given a
        background task's id, cancels that task (see :meth:`Executor.cancel`)."""
        if isinstance(future, str):
            return await self.cancel_by_id(future)
        executor = self.executor
        if isinstance(executor, LoopExecutor):
            return await executor.acancel(future, interrupt)
        return executor.cancel(future, interrupt)

    # -- background tasks (see Executor.enqueue) ------------------------------------------

    async def enqueue(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """As :meth:`Executor.enqueue`, the router's confirmation awaited."""
        keep = kwargs.pop("keep", None)
        (future,) = await self._enqueue_calls(fn, [(args, kwargs)], keep)
        return future

    async def enqueue_map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], keep: float | None = None
    ) -> list[Future[T]]:
        """As :meth:`Executor.enqueue_map`, the router's confirmations awaited."""
        return await self._enqueue_calls(fn, calls_of(iterables), keep)

    async def _enqueue_calls(
        self,
        fn: Callable[..., T],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        keep: float | None,
    ) -> list[Future[T]]:
        executor = self.executor
        futures = executor._enqueue_calls(fn, calls, keep)  # does not wait in a loop
        await await_held(futures)
        return futures

    def attach(self, task_id: str) -> Future[Any]:
        """As :meth:`Executor.attach` (``await`` the future it returns)."""
        return self.executor.attach(task_id)

    async def task_info(self, task_id: str) -> TaskInfo:
        """As :meth:`Executor.task_info`, the router's answer awaited."""
        (answer,) = await await_answer(self.executor._ask("info", [task_id]), [task_id])
        return info_of(task_id, answer)

    async def cancel_by_id(self, task_id: str) -> bool:
        """As :meth:`Executor.cancel` given a background task's id, awaited."""
        (answer,) = await await_answer(self.executor._ask("cancel", [task_id]), [task_id])
        if not answer.get("cancelled"):
            await self.task_info(task_id)  # raises TaskNotFound for an unknown id
        return bool(answer.get("cancelled"))

    async def ask_router(self, query: dict[str, Any], frames: Sequence[Any] = ()) -> Any:
        """Send the router a QUERY (docs/protocol.md, "Queries") and await its JSON answer.

        Raises:
            Unavailable: no answer within ``squall.client.background.QUERY_TIMEOUT``.
        """
        executor = self.executor
        executor._check_open()
        waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if executor._core.ask(query, waiter, frames):
            executor._driver.wake()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(waiter), QUERY_TIMEOUT)
        except asyncio.TimeoutError:
            raise Unavailable(f"the router did not answer within {QUERY_TIMEOUT:g} s") from None

    async def functions(self) -> list[FunctionInfo]:
        """As :meth:`Executor.functions`, awaited."""
        return functions_of(await self.ask_router({"op": "functions"}))

    async def status(self) -> dict[str, Any]:
        """As :meth:`Executor.status`, awaited."""
        return dict(operator.checked(await self.ask_router({"op": "status"}), "status"))

    async def tasks(
        self,
        state: str | Iterable[str] | None = None,
        name: str | None = None,
        queue: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """As :meth:`Executor.tasks`, awaited."""
        query = operator.task_query(state, name, queue, since, until, limit, offset)
        return dict(operator.checked(await self.ask_router(query), "tasks"))

    async def inspect(self, task_id: str) -> dict[str, Any]:
        """As :meth:`Executor.inspect`, awaited."""
        answer = await self.ask_router({"op": "task", "id": task_id})
        return dict(operator.checked(answer, task_id))

    async def metrics(self) -> dict[str, Any]:
        """As :meth:`Executor.metrics`, awaited."""
        return dict(operator.checked(await self.ask_router({"op": "metrics"}), "metrics"))

    async def drain_worker(self, pid: int) -> dict[str, Any]:
        """As :meth:`Executor.drain_worker`, awaited."""
        answer = await self.ask_router({"op": "drain", "pid": pid})
        return dict(operator.checked(answer, f"drain {pid}"))

    async def retry(self, task_id: str) -> str:
        """As :meth:`Executor.retry`, awaited."""
        answer = await self.ask_router({"op": "retry", "id": task_id})
        return str(operator.checked(answer, task_id)["id"])

    def events(self, types: Iterable[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """As :meth:`Executor.events`: ``async for event in aex.events(): ...``."""
        return operator.async_events(self, types)

    async def stats(self) -> dict[str, Any]:
        """The router's counters and this client's (as :meth:`Executor.stats`), awaited."""
        executor = self.executor
        if isinstance(executor, LoopExecutor):
            return await executor.astats()
        return executor.stats()

    async def aclose(self, cancel_futures: bool = False) -> None:
        """Wait for pending tasks (unless cancelled) and stop, without blocking the loop."""
        executor = self._executor
        if isinstance(executor, LoopExecutor):
            await executor.aclose(cancel_futures)
        elif executor is not None:
            executor.shutdown(True, cancel_futures=cancel_futures)

    async def __aenter__(self) -> AsyncExecutor:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class LoopExecutor(Executor):
    """An :class:`Executor` whose I/O driver runs on the event loop that made it.

    Its ``submit``, ``stream``, ``map``'s submits and ``cancel`` work as an Executor's (none
    waits in the loop); what would wait is awaited with the ``a``-methods instead.
    """

    def _connect(
        self, auth: str | None, key: str, group: str, deadline: float, timeout: float
    ) -> None:
        """Connect on the running loop and say HELLO; :meth:`started` awaits the rest."""
        driver = AsyncioDriver(self.address, self._core, auth, key, group)
        self._driver = self._session.driver = self._aio = driver
        self._deadline, self._timeout = deadline, timeout
        driver.start()

    async def started(self) -> None:
        """Await the router's WELCOME and the embedded workers, within ``connect_timeout``.

        Raises:
            StartupError: as :class:`Executor` does.
        """
        try:
            await self._aio.ready(max(0.1, self._deadline - time.monotonic()))
            if self._cluster is not None:
                await self._workers_ready(self._cluster.processes)
        except BaseException:
            self._closed = True
            self._finalizer.detach()
            await self._close_now()
            raise

    async def _workers_ready(self, count: int) -> None:
        while True:
            assert self._cluster is not None
            self._cluster.check()
            left = self._deadline - time.monotonic()
            try:
                if (await self._aio.astats(max(0.1, min(left, 5.0))))["workers"] >= count:
                    return
            except asyncio.TimeoutError:
                pass
            if time.monotonic() > self._deadline:
                raise StartupError(
                    f"{count} embedded worker processes not ready in {self._timeout:g} s"
                )
            await asyncio.sleep(0.05)

    def submit_all(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        options: TaskOptions | None = None,
    ) -> list[Future[T]]:
        """``fn`` over the zipped ``iterables``, the function pickled once; each batch of
        calls is sent before the next is pickled (the loop, busy here, would send nothing
        before the last), so the first tasks run while the rest are being pickled."""
        calls = zip(*iterables, strict=False)
        futures: list[Future[T]] = []
        while batch := list(itertools.islice(calls, MAP_BATCH)):
            futures += self._submit_calls(fn, batch, options)
            self._aio.send_now()
        return futures

    def withdraw(self, futures: list[Future[Any]]) -> Withdrawal | None:
        """Ask the router to drop those of ``futures`` no worker has yet (one message); the
        answer cancels them when it comes."""
        return self._session.withdraw(futures, wait=False)

    async def acancel(self, future: Future[Any], interrupt: bool = False) -> bool:
        """:meth:`Executor.cancel`, the router's answer awaited (at most WITHDRAW_TIMEOUT)."""
        request = self.withdraw([future])
        if request is not None and not request.answered.is_set():
            loop = asyncio.get_running_loop()
            answered = loop.create_future()
            request.on_answer = lambda: loop.call_soon_threadsafe(_resolve, answered)
            try:
                await asyncio.wait_for(answered, WITHDRAW_TIMEOUT)
            except asyncio.TimeoutError:
                self._core.abandon(request)
        if future.cancelled():
            return True
        return self.cancel(future, interrupt)  # False, or the interrupt (no waiting left)

    async def astats(self) -> dict[str, Any]:
        """:meth:`Executor.stats`, awaited."""
        stats = await self._aio.astats()
        stats["client_bodies_sent"] = self._core.bodies_sent
        stats["client_pending"] = len(self._core.pending)
        if self._cluster is not None:
            stats["embedded_pids"] = self._cluster.pids
        return stats

    async def aclose(self, cancel_futures: bool = False) -> None:
        """:meth:`Executor.shutdown`, awaited: pending tasks still finish (unless
        ``cancel_futures`` withdraws those not started), then the socket and the embedded
        processes close."""
        self._stop_taking(cancel_futures)
        told = False
        while futures := [t for t in self._core.targets(background=False) if isinstance(t, Future)]:
            if await _all_done(futures, SLOW_SHUTDOWN_NOTICE):
                continue
            silent = self._aio.silent_for()
            if silent > ROUTER_GONE_AFTER:  # nobody can finish them
                self._core.fail_all(
                    WorkerLost(
                        f"the router has not answered for {silent:.0f} s; the executor closed "
                        "without the outcomes of these tasks"
                    )
                )
                break
            if not told:
                told = True
                log.warning(
                    "waiting for pending tasks before closing the executor; "
                    "aclose(cancel_futures=True) drops those not started",
                    pending=len(futures),
                )
        await self._close_now()

    def _stop_taking(self, cancel_futures: bool) -> None:
        with self._lock:
            first, self._closed = not self._closed, True
        if first:
            self._finalizer.detach()
            if cancel_futures:
                self._session.cancel_all()  # in the loop: the answers cancel them as they come

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """In the event loop nothing may wait (the loop alone reads the answers): new work is
        refused at once, and the executor closes in a task once its pending tasks are done,
        as :meth:`aclose` does."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().shutdown(wait, cancel_futures=cancel_futures)
            return
        self._stop_taking(cancel_futures)
        self._closing_task = loop.create_task(self.aclose())

    async def _close_now(self) -> None:
        """Close the session (its driver; what is still pending fails), then stop the embedded
        processes, awaited."""
        cluster, self._session.cluster = self._session.cluster, None
        self._session.close()
        if cluster is not None:
            await cluster.astop()


async def _all_done(futures: list[Future[Any]], timeout: float) -> bool:
    """Wait until every one of ``futures`` is done (True), or ``timeout`` seconds (False)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    lock = threading.Lock()
    left = [len(futures)]

    def one_done(_: object) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            try:
                loop.call_soon_threadsafe(_resolve, done)
            except RuntimeError:  # the loop closed: nobody waits
                pass

    for future in futures:
        future.add_done_callback(one_done)
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        return False
    return True


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _with_progress(results: AsyncIterator[T], total: int) -> AsyncIterator[T]:
    """A progress bar over ``results``, drawn where one can be (see Executor.map)."""
    from squall.client.executor import progress_bar

    with progress_bar(total) as bar:
        async for result in results:
            bar.update(1)
            yield result


async def _results(
    futures: list[Future[T]],
    timeout: float | None,
    ordered: bool,
    withdraw: Callable[[list[Future[Any]]], None],
) -> AsyncIterator[T]:
    """The results; if the caller stops early, what has not started is withdrawn in one
    message, not waited for (this is the event loop's thread)."""
    try:
        if ordered:
            deadline = None if timeout is None else time.monotonic() + timeout
            for future in futures:
                if future.done():  # results come in batches: most are here already
                    yield future.result()
                    continue
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                yield await asyncio.wait_for(future, remaining)
        else:
            async for future in as_completed(futures, timeout):
                yield future.result()
    finally:
        withdraw([f for f in futures if not f.done()])
