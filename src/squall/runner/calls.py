"""How a worker calls a task's function: plain, ``async def``, generators, dependencies.

Kept apart from the socket code in ``runner.executor`` so each rule reads on its own:

- arguments that stood for other tasks' futures are replaced by those tasks' values (which the
  router attached to the task), or the call fails naming the dependency that failed;
- a coroutine (an ``async def`` task) runs on one asyncio loop per process, itself running in a
  greenlet: gevent has patched ``select``, so the loop waits cooperatively and thousands of
  coroutines run beside thousands of plain greenlets;
- a generator returned to ``submit`` is drained into a list (generators cannot be pickled);
  ``stream`` iterates it item by item instead.

The task's options (timeout, retries) wrap all of this the same way for every kind of function:
see ``WorkerProcess._run`` and :mod:`squall.options`.

asyncio is imported with the loop, by the first coroutine: a worker that never runs one does not
carry it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent

from squall import serialization
from squall.errors import DependencyFailed
from squall.protocol import Frame, Status
from squall.serialization import DependencyRef

if TYPE_CHECKING:
    import asyncio


class AsyncBridge:
    """One asyncio event loop per worker process, run by a greenlet, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._incoming: list[tuple[int, Any, Callable[[asyncio.Task[Any]], None]]] = []
        self._running: dict[int, asyncio.Task[Any]] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
            gevent.spawn(self._loop.run_forever)
        return self._loop

    @property
    def running(self) -> int:
        """Coroutines started and not finished."""
        return len(self._running) + len(self._incoming)

    def spawn(self, key: int, coroutine: Any, done: Callable[[asyncio.Task[Any]], None]) -> None:
        """Start ``coroutine`` as a task on the loop; ``done(task)`` runs when it ends.

        No greenlet waits for it: thousands of ``async def`` tasks cost one asyncio task each,
        and one wake-up of the loop per batch of them.
        """
        self._incoming.append((key, coroutine, done))
        if len(self._incoming) == 1:
            self.loop.call_soon_threadsafe(self._start_incoming)

    def _start_incoming(self) -> None:
        incoming, self._incoming = self._incoming, []
        for key, coroutine, done in incoming:
            task = self.loop.create_task(coroutine)
            self._running[key] = task
            task.add_done_callback(functools.partial(self._ended, key, done))

    def _ended(
        self, key: int, done: Callable[[asyncio.Task[Any]], None], task: asyncio.Task[Any]
    ) -> None:
        self._running.pop(key, None)
        done(task)

    def stepping(self) -> int | None:
        """The key of the coroutine the loop is running at this instant, if any.

        Read by the watchdog thread while the hub is blocked: a coroutine that never awaits
        blocks the loop's greenlet, and with it the hub.
        """
        loop = self._loop
        if loop is None:
            return None
        import asyncio  # imported with the loop: a dictionary lookup

        task = asyncio.current_task(loop)
        if task is None:
            return None
        return next((key for key, t in list(self._running.items()) if t is task), None)

    def cancel(self, key: int) -> bool:
        """Cancel a spawned coroutine; False if there is none under ``key``."""
        task = self._running.get(key)
        if task is None:
            return False
        self.loop.call_soon_threadsafe(task.cancel)
        return True

    def run(self, awaitable: Any) -> Any:
        """Run ``awaitable`` on the loop; block only the calling greenlet until it is done."""
        loop = self.loop
        import asyncio  # imported with the loop

        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), loop)
        try:
            return future.result()
        except BaseException:
            # The greenlet was interrupted (cancelled: GreenletExit; past its timeout:
            # gevent.Timeout): stop the coroutine too. Its own exception leaves it done.
            future.cancel()
            raise

    def iterate(self, agen: AsyncIterator[Any]) -> Iterator[Any]:
        """A plain iterator over an async generator, each step run on the loop."""
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                self.run(aclose())  # its finally blocks run


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


def resolve(
    args: tuple[Any, ...], kwargs: dict[str, Any], deps: list[tuple[int, list[Frame]]]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Put the values of dependencies where the client left :class:`DependencyRef` markers.

    Raises:
        DependencyFailed: a dependency failed or was cancelled; names it, chains its error.
    """
    if not deps:
        return args, kwargs
    values: dict[int, Any] = {}

    def value(ref: DependencyRef) -> Any:
        if ref.index not in values:
            status, frames = deps[ref.index]
            if status == Status.OK:
                values[ref.index] = serialization.loads(frames)
            elif status == Status.CANCELLED:
                raise DependencyFailed(f"dependency task {ref.task_id} was cancelled")
            else:
                cause = serialization.loads_exception(frames)
                raise DependencyFailed(
                    f"dependency task {ref.task_id} failed: {type(cause).__name__}: {cause}"
                ) from cause
        return values[ref.index]

    def swap(obj: Any, depth: int = 0) -> Any:
        kind = type(obj)
        if kind is DependencyRef:
            return value(obj)
        if depth >= 2:
            return obj
        if kind is list or kind is tuple:
            return kind(swap(x, depth + 1) for x in obj)
        if kind is dict:
            return {k: swap(v, depth + 1) for k, v in obj.items()}
        return obj

    return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}


def collect(result: Any, bridge: AsyncBridge) -> Any:
    """What ``submit`` returns for a call's result: generators drained into lists, other
    awaitables awaited (coroutines are spawned by the caller instead)."""
    if inspect.isawaitable(result):
        return bridge.run(result)
    if inspect.isgenerator(result):
        return list(result)
    if inspect.isasyncgen(result):
        return list(bridge.iterate(result))
    return result


def iterate(result: Any, fn: Any, bridge: AsyncBridge) -> Iterator[Any]:
    """What ``stream`` iterates for the ``result`` of a call of ``fn``: a generator itself,
    an async generator stepped on the loop, any other iterable's iterator."""
    if inspect.isawaitable(result):
        result = bridge.run(result)
    if inspect.isasyncgen(result):
        return bridge.iterate(result)
    try:
        return iter(result)
    except TypeError:
        raise TypeError(
            f"stream() needs a generator or iterable, {serialization.describe(fn)} returned a "
            f"{type(result).__name__}"
        ) from None
