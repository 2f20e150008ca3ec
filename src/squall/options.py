"""Per-task options (timeout, retries, retry_on, backoff) and the one way they apply.

Given as ``ex.options(timeout=..., retries=...)`` (a view of the executor, see
:mod:`squall.client.view`) or as ``submit(..., timeout=, retries=, retry_on=, backoff=)``. They
travel inside the task's pickled payload: only the worker needs them, and the router stays out
of it. The worker (``runner.executor``) and inline mode (``client.inline``) both apply them with
the helpers here, so a plain function, an ``async def``, a generator and an async generator, run
by ``submit``, ``map`` or ``stream``, all get the same rules:

- ``timeout`` bounds each attempt: the call and everything it produces (a generator drained for
  ``submit``, every value of a ``stream``, pauses for an unread stream window included). Past
  it the attempt is interrupted and fails with ``squall.TaskTimeout``.
- ``queue``, ``priority``, ``delay``/``at``, ``expires`` and ``key`` are the router's: they
  travel in the task's route (:class:`squall.protocol.Route`), not in the payload, and
  :func:`split` takes them out before the payload is pickled.
- ``retries`` runs a failed attempt again (after a backoff pause) when its exception is one of
  ``retry_on``; a ``TaskTimeout`` is such an exception too, unless ``retry_on`` leaves it out. A
  stream is run again only if it failed before yielding anything: values already delivered are
  never repeated.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import numbers
import random
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from squall import tracing
from squall.errors import TaskTimeout
from squall.protocol import DEFAULT_QUEUE, DEFAULT_ROUTE, Route, valid_queue

T = TypeVar("T")

#: keyword arguments ``submit`` and ``stream`` keep for themselves (not ``ex.options()``'s views)
RESERVED = ("timeout", "retries", "retry_on", "backoff", "traceparent")


@dataclass(frozen=True)
class TaskOptions:
    """How one task runs on its worker. Checked when made: a bad value raises at the call.

    Args:
        timeout: seconds each attempt may run; past it, it is interrupted and fails with
            ``squall.TaskTimeout``. None: no limit.
        retries: times to run the task again when it raises one of ``retry_on``.
        retry_on: exception types worth a retry (``Exception`` subclasses: a cancellation or
            ``KeyboardInterrupt`` is never retried); application errors are retried only
            when asked, and then only these (default: any ``Exception``).
        backoff: first pause between attempts in seconds; it doubles each attempt, with
            jitter, up to ``max_backoff``.
        queue: the named queue it waits in; only workers serving it run it.
        priority: higher runs first within its queue (FIFO among equals).
        delay: seconds from submit before it may start; or ``at``, a timezone-aware datetime.
        expires: seconds from submit (or an aware datetime) past which, never started, it
            fails with ``squall.TaskExpired`` and never runs.
        key: a background task's unique key: enqueueing the same key while a task with it is
            kept gives that task's future, not a new task.
        traceparent: a W3C trace context (``00-<trace id>-<span id>-<flags>``): the task runs
            as a child span of it on its worker (``squall.tracing``); by default, the current
            OpenTelemetry span's when the caller uses OpenTelemetry.

    Raises:
        TypeError: a value of the wrong type (``retries`` not an int, ``retry_on`` not
            exception classes, ...).
        ValueError: a timeout that is not positive, negative retries or backoff.
    """

    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[Exception], ...] = (Exception,)
    backoff: float = 0.1
    max_backoff: float = 30.0
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    delay: float | None = None
    at: datetime.datetime | None = None
    expires: float | datetime.datetime | None = None
    key: str | None = None
    traceparent: str | None = None

    def __post_init__(self) -> None:
        self._check_routing()
        if self.traceparent is not None:
            tracing.check(self.traceparent)
        if self.timeout is not None:
            _check_seconds("timeout", self.timeout)
            if self.timeout <= 0:
                raise ValueError(f"timeout must be positive seconds or None, not {self.timeout!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise TypeError(f"retries must be an int, not {type(self.retries).__name__}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, Exception) for kind in retry_on
        ):
            raise TypeError(
                f"retry_on must be an Exception subclass or a tuple of them, not {self.retry_on!r}"
            )
        object.__setattr__(self, "retry_on", retry_on)
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            _check_seconds(name, value)
            if value < 0:
                raise ValueError(f"{name} must be 0 or more seconds, not {value!r}")

    def _check_routing(self) -> None:
        if not isinstance(self.queue, str) or not valid_queue(self.queue):
            raise ValueError(
                f"queue must be 1 to 64 letters, digits or _-.: characters, not {self.queue!r}"
            )
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"priority must be an int, not {type(self.priority).__name__}")
        if not -(2**31) <= self.priority < 2**31:
            raise ValueError(f"priority must fit in 32 bits, not {self.priority}")
        if self.delay is not None:
            _check_seconds("delay", self.delay)
            if self.delay < 0:
                raise ValueError(f"delay must be 0 or more seconds, not {self.delay!r}")
            if self.at is not None:
                raise ValueError("give delay or at, not both")
        if self.at is not None:
            _check_aware("at", self.at)
        if isinstance(self.expires, datetime.datetime):
            _check_aware("expires", self.expires)
        elif self.expires is not None:
            _check_seconds("expires", self.expires)
            if self.expires <= 0:
                raise ValueError(f"expires must be positive seconds, not {self.expires!r}")
        if self.key is not None and (not isinstance(self.key, str) or not 0 < len(self.key) <= 200):
            raise ValueError(f"key must be a str of 1 to 200 characters, not {self.key!r}")

    def route(self, now: float | None = None) -> Route | None:
        """Where and when the router runs the task, times made absolute from ``now`` (Unix
        seconds, the submit); None for the default route."""
        now = time.time() if now is None else now
        not_before = 0.0
        if self.delay:
            not_before = now + self.delay
        elif self.at is not None:
            not_before = self.at.timestamp()
        expires = 0.0
        if isinstance(self.expires, datetime.datetime):
            expires = self.expires.timestamp()
        elif self.expires is not None:
            expires = now + self.expires
        route = Route(self.queue, self.priority, not_before, expires)
        return None if route == DEFAULT_ROUTE else route

    def merged(self, **changes: Any) -> TaskOptions:
        """These options with ``changes`` applied (checked like a new set)."""
        return dataclasses.replace(self, **changes) if changes else self

    def pause(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): exponential, capped,
        with "full jitter" so that retrying tasks do not stampede together."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


def _check_aware(name: str, value: object) -> None:
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name}={value.isoformat()} is a naive datetime: give it a time zone "
            "(e.g. datetime.now(timezone.utc)), so that it means one instant"
        )


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")


#: what a task without options runs with
DEFAULT = TaskOptions()


def from_kwargs(kwargs: dict[str, object]) -> TaskOptions | None:
    """Take squall's own keywords out of ``kwargs`` (in place); None when there are none."""
    found = {name: kwargs.pop(name) for name in RESERVED if name in kwargs}
    if not found:
        return None
    return TaskOptions(**found)  # type: ignore[arg-type]  # checked in __post_init__


#: the router's options: they travel in the route, never to the worker
ROUTING = ("queue", "priority", "delay", "at", "expires", "key")
_NO_ROUTING = {name: getattr(DEFAULT, name) for name in ROUTING}


def to_send(options: TaskOptions | None) -> TaskOptions | None:
    """What goes in the payload: None for the defaults, so the worker takes its fast path;
    the router's options left out."""
    if options is None or options == DEFAULT:
        return None
    options = dataclasses.replace(options, **_NO_ROUTING)
    return None if options == DEFAULT else options


def split(options: TaskOptions | None) -> tuple[Route | None, TaskOptions | None]:
    """The route of a task with ``options`` (None: the default one) and what goes in its
    payload (see :func:`to_send`), with the caller's current trace context when it has one
    and the options name none."""
    if options is None or options.traceparent is None:
        traceparent = tracing.current()
        if traceparent is not None:
            options = (options or DEFAULT).merged(traceparent=traceparent)
    if options is None or options == DEFAULT:
        return None, None
    return options.route(), to_send(options)


def timed_out(timeout: float) -> TaskTimeout:
    """The error of an attempt that ran past ``timeout`` seconds."""
    return TaskTimeout(f"the task ran past its timeout of {timeout:g} s")


#: told of each retry: the number of the attempt that failed (1, 2, ...) and its error
OnRetry = Callable[[int, BaseException], object]


def retrying(
    attempt: Callable[[], T],
    options: TaskOptions,
    sleep: Callable[[float], object],
    may_retry: Callable[[], bool] | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """``attempt()``, run again on ``options.retry_on`` errors, up to ``options.retries``
    times, ``sleep``-ing the backoff in between. ``may_retry`` can veto a retry (a stream that
    has yielded already); ``on_retry`` hears of each (a worker tells the router). The attempt
    applies the timeout itself: a greenlet's timer on a worker, a helper thread inline."""
    retry = 0
    while True:
        try:
            return attempt()
        except options.retry_on as exc:
            if retry >= options.retries or (may_retry is not None and not may_retry()):
                raise
            retry += 1
            if on_retry is not None:
                on_retry(retry, exc)
        sleep(options.pause(retry))


def _asyncio() -> types.ModuleType:
    """asyncio, imported by the coroutines that need it (its loop is running by then), not
    with this module: a worker process that runs no coroutine does without its 4 MB."""
    import asyncio

    return asyncio


async def retrying_async(
    make: Callable[[], Awaitable[T]],
    options: TaskOptions,
    mark: Callable[[float | None], object] | None = None,
    first: Awaitable[T] | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """The coroutine form of :func:`retrying`, for ``async def`` tasks: each attempt awaits a
    fresh ``make()`` (``first`` for the first one, when the call was made already) under the
    timeout. ``mark(deadline)`` is told each attempt's monotonic deadline, then None."""
    retry = 0
    awaitable = first if first is not None else make()
    while True:
        try:
            return await within(awaitable, options.timeout, mark)
        except options.retry_on as exc:
            if retry >= options.retries:
                raise
            retry += 1
            if on_retry is not None:
                on_retry(retry, exc)
        await _asyncio().sleep(options.pause(retry))
        awaitable = make()


async def within(
    awaitable: Awaitable[T],
    timeout: float | None,
    mark: Callable[[float | None], object] | None = None,
    limit: float | None = None,
) -> T:
    """``await awaitable``, cancelled past ``timeout`` seconds with ``TaskTimeout`` (naming
    ``limit``, the task's whole time limit, if what is left of it is ``timeout``).

    Not ``asyncio.wait_for``: a ``TimeoutError`` the task raises itself stays its own.
    """
    if timeout is None:
        return await awaitable
    asyncio = _asyncio()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    if mark is not None:
        mark(loop.time() + timeout)
    timer = loop.call_later(timeout, expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if not expired:
            raise
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the cancel is handled
        if uncancel is not None:
            uncancel()
        raise timed_out(limit or timeout) from None
    finally:
        timer.cancel()
        if mark is not None:
            mark(None)
