"""``squall.AsyncExecutor``: the same client, shaped for code that lives in asyncio.

It wraps an :class:`Executor` rather than re-implementing one: the core, the I/O driver and the
futures are shared, and squall futures are awaitable already. What this adds is an asyncio
surface: ``async with``, an async-iterator ``map`` and ``await aclose()``, with the blocking
parts (starting the embedded router and workers, waiting for tasks at shutdown) run in a
thread so the event loop never stalls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from squall.client.executor import Executor
from squall.client.future import Future, as_completed
from squall.client.stream import Stream

T = TypeVar("T")
P = ParamSpec("P")


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
    """

    def __init__(self, address: str | None = None, **options: Any) -> None:
        self._address = address
        self._options = options
        self._executor: Executor | None = None

    async def start(self) -> AsyncExecutor:
        """Connect (or start the embedded default) without blocking the event loop."""
        if self._executor is None:
            self._executor = await asyncio.to_thread(Executor, self._address, **self._options)
        return self

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise RuntimeError("AsyncExecutor not started: use 'async with' or 'await start()'")
        return self._executor

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """As :meth:`Executor.submit`; ``await`` the returned future."""
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
        does."""
        futures = self.executor._submit_many(fn, iterables)
        results = _results(futures, timeout, ordered, self.executor._session.withdraw)
        return _with_progress(results, len(futures)) if progress else results

    async def cancel(self, future: Future[Any], interrupt: bool = False) -> bool:
        """As :meth:`Executor.cancel`, awaited: the router's answer is waited for off the
        event loop. True means the task never ran, or with ``interrupt`` that it was stopped
        on its worker (its ``finally`` runs; the future raises ``CancelledError``)."""
        return await asyncio.to_thread(self.executor.cancel, future, interrupt)

    async def stats(self) -> dict[str, Any]:
        """The router's counters and this client's (as :meth:`Executor.stats`), awaited."""
        return await asyncio.to_thread(self.executor.stats)

    async def aclose(self, cancel_futures: bool = False) -> None:
        """Wait for pending tasks (unless cancelled) and stop, off the event loop."""
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=cancel_futures)

    async def __aenter__(self) -> AsyncExecutor:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


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
    withdraw: Callable[[list[Future[T]], bool], None],
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
        withdraw([f for f in futures if not f.done()], False)
