"""The operator's view from Python: ``ex.status()``, ``ex.tasks()``, ``ex.inspect()``,
``ex.metrics()``, ``ex.events()``, and the actions ``ex.drain_worker()`` and ``ex.retry()``.

All of it is the router's answer to a QUERY (docs/protocol.md, "Queries"), as plain JSON
values: ``squall status``, the dashboard and ``/metrics`` read the same answers. Events come
as they happen, in batches, to clients that subscribed (EVENTS); with no subscriber the
router builds none.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from squall.errors import Refused


def checked(answer: Any, what: str) -> Any:
    """The router's answer, or the one-line reason it gave for refusing ``what``.

    Raises:
        Refused: this client's key is not an operator's (with authentication on).
        ValueError: the router refused the request (a bad filter, an unknown id).
    """
    if isinstance(answer, dict) and "error" in answer:
        if answer.get("code") == "not_operator":
            raise Refused(f"{what}: {answer['error']}")
        raise ValueError(f"{what}: {answer['error']}")
    return answer


def task_query(
    state: str | Iterable[str] | None = None,
    name: str | None = None,
    queue: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """The ``tasks`` QUERY for these filters (see :meth:`OperatorMethods.tasks`)."""
    if state is not None and not isinstance(state, str):
        state = list(state)
    return {
        "op": "tasks",
        "state": state,
        "name": name,
        "queue": queue,
        "since": since,
        "until": until,
        "limit": limit,
        "offset": offset,
    }


class OperatorMethods:
    """``status``, ``tasks``, ``inspect``, ``metrics``, ``events``, ``drain_worker`` and
    ``retry`` of ``squall.Executor``."""

    _ask_router: Callable[..., Any]
    _core: Any
    _driver: Any
    _check_open: Callable[[], None]

    def status(self) -> dict[str, Any]:
        """The fleet now: ``workers`` (host, pid, queues, capacity, running, done, last
        heartbeat, RSS), ``queues`` (depth, running, rates in and out, oldest wait),
        ``totals`` (the counters of :meth:`stats`), ``rates``, ``outcomes`` and
        ``recent_failures``; what ``squall status --json`` prints."""
        return dict(checked(self._ask_router({"op": "status"}), "status"))

    def tasks(
        self,
        state: str | Iterable[str] | None = None,
        name: str | None = None,
        queue: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Recent and live tasks, newest first: ``{"tasks": [...], "next": offset | None}``.

        Filters: ``state`` (one or several of scheduled, waiting, queued, running,
        succeeded, failed, cancelled, expired), a part of the function's ``name``, the
        ``queue``, and Unix times ``since``/``until``. Finished tasks come from the router's
        bounded history (``squall router --history``).

        Raises:
            ValueError: a bad filter, named by the router.
        """
        query = task_query(state, name, queue, since, until, limit, offset)
        return dict(checked(self._ask_router(query), "tasks"))

    def inspect(self, task_id: str) -> dict[str, Any]:
        """One task's record: name, queue, state, timeline, attempts, worker, and for a
        failure its error's type, message and traceback text (never unpickled).

        Raises:
            ValueError: no such task (or it left the history), or a malformed id.
        """
        return dict(checked(self._ask_router({"op": "task", "id": task_id}), task_id))

    def metrics(self) -> dict[str, Any]:
        """The figures behind ``/metrics``, as JSON (see ``squall.metrics``)."""
        return dict(checked(self._ask_router({"op": "metrics"}), "metrics"))

    def drain_worker(self, pid: int) -> dict[str, Any]:
        """Send nothing new to worker process ``pid``; what it runs finishes there.

        Raises:
            ValueError: no worker process ``pid`` is connected.
        """
        return dict(checked(self._ask_router({"op": "drain", "pid": pid}), f"drain {pid}"))

    def retry(self, task_id: str) -> str:
        """Run a failed background task again, as a new background task with the same
        function, arguments and queue; return the new task's id.

        Raises:
            ValueError: no such background task, or it did not fail.
        """
        return str(checked(self._ask_router({"op": "retry", "id": task_id}), task_id)["id"])

    def events(self, types: Iterable[str] | None = None, timeout: float | None = None) -> Events:
        """Iterate the router's task and worker events as they happen, from now on (dicts
        with ``type``, ``t``, and for a task ``id``, ``name``, ``queue``, ``attempt``...; see
        docs/protocol.md). ``types`` keeps only those (e.g. ``["task.failed"]``);
        ``timeout``: stop when none arrives for that many seconds. Close it (or use it as a
        context manager) to unsubscribe."""
        self._check_open()
        return Events(self, None if types is None else list(types), timeout)


class Events:
    """An iterator of router events for one reader (see :meth:`OperatorMethods.events`).

    The client's I/O thread hands it each batch; it never blocks that thread. Events wait
    here until read; a reader that falls behind by more than ``max_held`` loses the oldest
    (and is told, by an event of type ``events.lost``).
    """

    def __init__(
        self,
        executor: OperatorMethods,
        types: list[str] | None,
        timeout: float | None,
        max_held: int = 1_000_000,
    ) -> None:
        self._executor = executor
        self._timeout = timeout
        self._held: collections.deque[dict[str, Any]] = collections.deque()
        self._max_held = max_held
        self._ready = threading.Condition()
        self._closed = False
        self._types = None if types is None else frozenset(types)
        executor._core.add_event_sink(self._take)
        checked(executor._ask_router({"op": "subscribe", "types": None}), "subscribe")

    def _take(self, batch: list[dict[str, Any]]) -> None:
        types = self._types
        with self._ready:
            held = self._held
            held.extend(batch if types is None else (e for e in batch if e["type"] in types))
            lost = len(held) - self._max_held
            if lost > 0:
                for _ in range(lost):
                    held.popleft()
                held.appendleft({"type": "events.lost", "count": lost})
            self._ready.notify_all()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        held = self._held
        if held:  # the common case under load: no lock (a deque's popleft is atomic)
            try:
                return held.popleft()
            except IndexError:  # another reader of this iterator took it meanwhile
                pass
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        with self._ready:
            while not self._held:
                if self._closed:
                    raise StopIteration
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise StopIteration
                self._ready.wait(left if left is not None else 1.0)
            return self._held.popleft()

    def close(self) -> None:
        """Stop reading: the router stops sending once no reader of this client is left."""
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._ready.notify_all()
        if self._executor._core.remove_event_sink(self._take):
            try:
                self._executor._ask_router({"op": "unsubscribe"})
            except Exception:  # the executor is closing, or the router gone: nothing to undo
                pass

    def __enter__(self) -> Events:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


async def async_events(
    aexecutor: Any, types: Iterable[str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """``AsyncExecutor.events()``: the router's events, as an async iterator (close it, or
    leave its ``async for``, to unsubscribe)."""
    executor = aexecutor.executor
    executor._check_open()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    wanted = None if types is None else frozenset(types)

    def take(batch: list[dict[str, Any]]) -> None:  # in the client's I/O thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, batch)
        except RuntimeError:  # the loop closed under a reader that never finished
            pass

    executor._core.add_event_sink(take)
    try:
        checked(await aexecutor.ask_router({"op": "subscribe", "types": None}), "subscribe")
        while True:
            for event in await queue.get():
                if wanted is None or event["type"] in wanted:
                    yield event
    finally:
        if executor._core.remove_event_sink(take):
            try:
                await aexecutor.ask_router({"op": "unsubscribe"})
            except Exception:  # closing, or the router gone: nothing to undo
                pass
