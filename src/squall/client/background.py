"""Background tasks from the executor's side: enqueue, attach, look up and cancel by id.

A background task belongs to the router, not to the client that enqueued it (see
``squall.router.background``): the client sends it as an ENQUEUE under a fresh id, with its
function body (the router keeps that too), and ``enqueue`` returns only once the router says
it holds the task (ENQUEUED, sent after the commit with ``--data``). Any client can then
attach a future to the id, or ask for its state with a QUERY, which the router answers from
its store without unpickling anything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from squall import functions, ids, protocol, serialization
from squall import options as task_options
from squall.client._core import Call
from squall.client.future import Future, HeldBatch
from squall.errors import ProtocolError, TaskNotFound, Unavailable, UsageError
from squall.options import TaskOptions
from squall.protocol import HASH_SIZE, EnqueueFlag, Kind

if TYPE_CHECKING:
    from squall.client._core import ClientCore, Driver

T = TypeVar("T")

#: seconds ``enqueue`` waits for the router to confirm it holds the tasks
CONFIRM_TIMEOUT = 30.0
#: seconds ``task_info`` and ``cancel`` wait for the router's answer
QUERY_TIMEOUT = 10.0
#: tasks per ENQUEUE hand-over in ``enqueue_map``
ENQUEUE_CHUNK = 1000
_NO_HASH = bytes(HASH_SIZE)


@dataclass(frozen=True)
class TaskInfo:
    """What the router knows of a background task, without waiting for it.

    ``state`` is one of ``scheduled`` (delayed: held until ``not_before``), ``queued``,
    ``running``, ``succeeded``, ``failed``, ``cancelled``. Times are Unix seconds (None until
    they happen); ``expires`` is when a finished task's outcome is dropped. ``error_type`` and
    ``error_message`` say why a failed task failed; ``queue`` is the named queue of an
    unfinished task. ``json``: a JSON call (its outcome is JSON, not a pickle). ``reason``:
    why a queued task cannot start now (no worker serves its function or queue).
    """

    id: str
    state: str
    attempts: int
    function: str
    submitted: float
    started: float | None
    finished: float | None
    expires: float | None
    error_type: str | None
    error_message: str | None
    queue: str | None = None
    not_before: float | None = None
    json: bool = False
    reason: str | None = None


def calls_of(iterables: tuple[Iterable[Any], ...]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """``map``'s calls: the arguments of each, ``zip(*iterables)``, no keyword arguments."""
    return [(args, {}) for args in zip(*iterables, strict=False)]


def json_options(options: TaskOptions | None) -> dict[str, Any] | None:
    """The options a JSON call carries to its worker (timeout, retries, backoff), as JSON;
    None for the defaults. (``retry_on`` is any Exception: a JSON caller names no classes.)"""
    if options is None:
        return None
    sent = {
        name: getattr(options, name)
        for name in functions.WORKER_OPTIONS
        if getattr(options, name) != getattr(task_options.DEFAULT, name)
    }
    return sent or None


def function_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a task's function, for people (the router shows it)."""
    return serialization.label_of(fn)


def _is_router_number(task_id: object) -> bool:
    """Whether ``task_id`` is the router's 16-hex-digit number for a task tied to its client."""
    return (
        isinstance(task_id, str)
        and len(task_id) == 16
        and all(c in "0123456789abcdef" for c in task_id)
    )


def _key_of(task_id: str) -> bytes:
    if not isinstance(task_id, str):
        raise TypeError(f"a task id is a str, not {type(task_id).__name__}")
    try:
        return ids.from_text(task_id)
    except ValueError as exc:
        raise TaskNotFound(str(exc)) from None


class BackgroundMethods:
    """``Executor``'s background-task methods (mixed in; they use its client core, so each
    and the three methods below, which ``Executor`` defines)."""

    _core: ClientCore
    _driver: Driver

    def _check_open(self) -> None:
        raise NotImplementedError

    def _new_future(self) -> Future[Any]:
        raise NotImplementedError

    def _enqueue(self, fn_hash: bytes, body: bytes, calls: list[Call]) -> None:
        raise NotImplementedError

    def enqueue(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` as a background task, kept by the router: it runs even
        if this process exits, its outcome is kept for ``keep`` seconds (a keyword squall
        takes, like ``timeout``; default: the router's ``--result-ttl``), and any process can
        find it again by ``future.id`` (:meth:`attach`, :meth:`task_info`).

        Returns once the router holds the task (with ``--data``: on disk), so a caller told
        it is enqueued never loses it. Squall's other keywords (``timeout``, ``retries``...)
        work as for ``submit``.

        Raises:
            SerializationError: ``fn`` or an argument cannot be pickled; nothing was sent.
            QueueFull, TaskTooLarge: the router refused it.
            Unavailable: the router did not confirm within CONFIRM_TIMEOUT seconds.
        """
        keep = kwargs.pop("keep", None)
        return self._enqueue_calls(fn, [(args, kwargs)], keep)[0]

    def enqueue_map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], keep: float | None = None
    ) -> list[Future[T]]:
        """``enqueue(fn, *args)`` for each tuple of arguments of ``zip(*iterables)``, sent in
        batches and confirmed together: one disk sync per batch in the router, not one per
        task. Returns the futures, in order, once the router holds every task."""
        calls = calls_of(iterables)
        futures: list[Future[T]] = []
        for start in range(0, len(calls), ENQUEUE_CHUNK * 10):
            futures += self._enqueue_calls(fn, calls[start : start + ENQUEUE_CHUNK * 10], keep)
        return futures

    def _enqueue_calls(
        self,
        fn: Callable[..., T] | str,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        keep: float | None,
        options: TaskOptions | None = None,
        as_json: bool = False,
    ) -> list[Future[T]]:
        """Enqueue ``calls`` of ``fn``; with ``options`` (a view's), the keyword arguments
        all go to ``fn``, else squall's own are taken out of them, as ``submit`` does.
        ``as_json``: ``fn`` is a name, and the calls' arguments and outcomes are JSON."""
        self._check_open()
        if keep is not None and not (isinstance(keep, (int, float)) and keep > 0):
            raise ValueError(f"keep must be a positive number of seconds, not {keep!r}")
        if as_json and not isinstance(fn, str):
            raise TypeError("a JSON call names its function by a str")
        fn_hash, body, called = functions.target(fn)
        name = called if isinstance(fn, str) else function_name(fn)
        batch: list[Call] = []
        futures: list[Future[T]] = []
        held = HeldBatch(len(calls))
        view_route, view_options = task_options.split(options)
        unique = options.key if options is not None else None
        for args, kwargs in calls:
            if options is None:
                route, call_options = task_options.split(task_options.from_kwargs(kwargs))
            else:
                route, call_options = view_route, view_options
            route = functions.named_route(route, called)
            if any(isinstance(a, Future) for a in itertools.chain(args, kwargs.values())):
                raise UsageError("a background task cannot take a squall.Future as argument")
            future: Future[T] = self._new_future()
            if as_json:
                frames = [functions.encode_json_call(args, kwargs, json_options(call_options))]
                future.loads = functions.loads_json
            else:
                frames = serialization.dumps_call(args, kwargs, call_options)
            # A unique key names one task: every enqueue of it sends the same id, and the
            # router attaches the later ones to the task the first one made.
            future._key = ids.new_id() if unique is None else ids.for_key(unique)
            future._held = held
            futures.append(future)
            keep_s = float(keep or 0)
            kind = Kind.JSON_CALL if as_json else Kind.CALL
            call = Call(frames, future, kind, key=future._key, keep=keep_s, name=name, route=route)
            batch.append(call)
        for start in range(0, len(batch), ENQUEUE_CHUNK):
            self._enqueue(fn_hash, body, batch[start : start + ENQUEUE_CHUNK])
        if self._core.caller_may_wait():  # not in the I/O thread or an event loop
            if not held.settled.wait(CONFIRM_TIMEOUT):
                raise _unconfirmed(futures)
            raise_refusal(futures)
        return futures

    def attach(self, task_id: str) -> Future[Any]:
        """A future for the background task ``task_id``, from any process: it resolves with
        the task's result or raises its error, as the original future would; for an unknown
        or expired id it raises ``squall.TaskNotFound``."""
        self._check_open()
        future: Future[Any] = self._new_future()
        future._key = _key_of(task_id)
        call = Call([], future, key=future._key, flags=EnqueueFlag.ATTACH)
        self._enqueue(_NO_HASH, b"", [call])
        return future

    def task_info(self, task_id: str) -> TaskInfo:
        """The state of background task ``task_id`` now, without waiting for it.

        Raises:
            TaskNotFound: no kept task has this id (the message says if it expired).
        """
        (answer,) = self._query("info", [task_id])
        return info_of(task_id, answer)

    def cancel_by_id(self, task_id: str) -> bool:
        """Cancel background task ``task_id``: a queued one never runs, a running one is
        stopped. False if it had finished already.

        Also takes the 16-hex id ``ex.tasks()`` and the dashboard show for a task tied to its
        client (any client's: an operator's cancel; that client's future then raises
        ``CancelledError``).

        Raises:
            TaskNotFound: no kept task has this id.
        """
        if _is_router_number(task_id):
            (answer,) = self._ask_router({"op": "cancel", "ids": [task_id]})
            return bool(answer.get("cancelled"))
        (answer,) = self._query("cancel", [task_id])
        if not answer.get("cancelled"):
            self.task_info(task_id)  # raises TaskNotFound for an unknown id
        return bool(answer.get("cancelled"))

    def set_limit(
        self, queue: str, rate: str | None = None, concurrency: int | None = None
    ) -> dict[str, Any]:
        """Limit named queue ``queue`` across all workers, at once and until the router
        stops (``squall router --limit`` sets them at start): at most ``rate`` starts
        (``"100/s"``, ``"10/m"``, ``"1/h"``; bursts up to one period's worth, never more in
        any window of one period) and at most ``concurrency`` running at once. Neither
        lifts the queue's limits. Returns the queue's limits now.

        Raises:
            ValueError: a bad queue name, rate or concurrency (checked here, in one line).
        """
        from squall.router.limits import parse_concurrency, parse_rate

        if not isinstance(queue, str) or not protocol.valid_queue(queue):
            raise ValueError(f"{queue!r} is not a queue name (letters, digits and _-.:)")
        if rate is not None:
            parse_rate(rate)
        if concurrency is not None:
            concurrency = parse_concurrency(concurrency)
        query = {"op": "limit", "queue": queue, "rate": rate, "concurrency": concurrency}
        answer = self._ask_router(query)
        if not isinstance(answer, dict) or "error" in answer:
            raise ValueError(f"the router refused the limit: {answer.get('error', answer)}")
        return answer

    def _ask_router(self, query: dict[str, Any], frames: Sequence[Any] = ()) -> Any:
        """Send a QUERY (and ``frames``); wait for the router's answer.

        Raises:
            Unavailable: no answer within QUERY_TIMEOUT.
        """
        self._check_open()
        waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._core.ask(query, waiter, frames):
            self._driver.wake()
        try:
            return waiter.result(QUERY_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise _no_answer() from None

    def _query(self, op: str, task_ids: list[str]) -> list[dict[str, Any]]:
        waiter = self._ask(op, task_ids)
        try:
            return checked_answer(waiter.result(QUERY_TIMEOUT), task_ids)
        except concurrent.futures.TimeoutError:
            raise _no_answer() from None

    def _ask(self, op: str, task_ids: list[str]) -> concurrent.futures.Future[Any]:
        """Send a QUERY; the returned future gets the router's answer."""
        self._check_open()
        for task_id in task_ids:
            _key_of(task_id)  # a malformed id fails here, naming it
        waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._core.ask({"op": op, "ids": task_ids}, waiter):
            self._driver.wake()
        return waiter


def info_of(task_id: str, answer: dict[str, Any]) -> TaskInfo:
    """The ``TaskInfo`` in the router's answer about ``task_id``.

    Raises:
        TaskNotFound: the router keeps no such task.
    """
    if "error" in answer:
        raise TaskNotFound(_not_found_text(task_id, answer["error"]))
    try:
        return TaskInfo(**answer)
    except TypeError as exc:
        raise ProtocolError(f"the router's task info cannot be read: {exc}") from None


def checked_answer(answer: Any, task_ids: list[str]) -> list[dict[str, Any]]:
    if not isinstance(answer, list) or len(answer) != len(task_ids):
        raise ProtocolError("the router's answer does not match the question")
    return answer


def raise_refusal(futures: list[Future[Any]]) -> None:
    """Raise the error of a task the router refused instead of holding (QueueFull, ...)."""
    for future in futures:
        if not future._was_held and future.done() and not future.cancelled():
            error = future.exception()
            if error is not None:
                raise error


def _unconfirmed(futures: list[Future[Any]]) -> Unavailable:
    return Unavailable(
        f"the router did not confirm {len(futures)} background task(s) within "
        f"{CONFIRM_TIMEOUT:g} s: it may or may not hold them (check with task_info)"
    )


def _no_answer() -> Unavailable:
    return Unavailable(f"the router did not answer within {QUERY_TIMEOUT:g} s")


async def await_held(futures: list[Future[Any]]) -> None:
    """``enqueue``'s wait for the router's word, awaited (the asyncio executor's)."""
    if not futures:
        return
    held = futures[0]._held
    if held is not None:
        loop = asyncio.get_running_loop()
        settled = loop.create_future()

        def wake_loop() -> None:
            loop.call_soon_threadsafe(_resolve, settled)

        held.on_settled = wake_loop
        if not held.settled.is_set():
            try:
                await asyncio.wait_for(settled, CONFIRM_TIMEOUT)
            except asyncio.TimeoutError:
                raise _unconfirmed(futures) from None
    raise_refusal(futures)


async def await_answer(
    waiter: concurrent.futures.Future[Any], task_ids: list[str]
) -> list[dict[str, Any]]:
    try:
        answer = await asyncio.wait_for(asyncio.wrap_future(waiter), QUERY_TIMEOUT)
    except asyncio.TimeoutError:
        raise _no_answer() from None
    return checked_answer(answer, task_ids)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _not_found_text(task_id: str, why: str) -> str:
    if why == "expired":
        return f"task {task_id} expired: its outcome was kept for its time to live and is gone"
    return f"no task {task_id} is kept by the router (never enqueued there, or long gone)"
