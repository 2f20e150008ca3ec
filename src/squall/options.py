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
- ``retries`` runs a failed attempt again (after a backoff pause) when its exception is one of
  ``retry_on``; a ``TaskTimeout`` is such an exception too, unless ``retry_on`` leaves it out. A
  stream is run again only if it failed before yielding anything: values already delivered are
  never repeated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import numbers
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from squall.errors import TaskTimeout

T = TypeVar("T")

#: keyword arguments ``submit`` and ``stream`` keep for themselves (not ``ex.options()``'s views)
RESERVED = ("timeout", "retries", "retry_on", "backoff")


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

    def __post_init__(self) -> None:
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

    def merged(self, **changes: Any) -> TaskOptions:
        """These options with ``changes`` applied (checked like a new set)."""
        return dataclasses.replace(self, **changes) if changes else self

    def pause(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): exponential, capped,
        with "full jitter" so that retrying tasks do not stampede together."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


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


def to_send(options: TaskOptions | None) -> TaskOptions | None:
    """What goes in the payload: None for the defaults, so the worker takes its fast path."""
    return None if options is None or options == DEFAULT else options


def timed_out(timeout: float) -> TaskTimeout:
    """The error of an attempt that ran past ``timeout`` seconds."""
    return TaskTimeout(f"the task ran past its timeout of {timeout:g} s")


def retrying(
    attempt: Callable[[], T],
    options: TaskOptions,
    sleep: Callable[[float], object],
    may_retry: Callable[[], bool] | None = None,
) -> T:
    """``attempt()``, run again on ``options.retry_on`` errors, up to ``options.retries``
    times, ``sleep``-ing the backoff in between. ``may_retry`` can veto a retry (a stream that
    has yielded already). The attempt applies the timeout itself: a greenlet's timer on a
    worker, a helper thread inline."""
    retry = 0
    while True:
        try:
            return attempt()
        except options.retry_on:
            if retry >= options.retries or (may_retry is not None and not may_retry()):
                raise
            retry += 1
        sleep(options.pause(retry))


async def retrying_async(
    make: Callable[[], Awaitable[T]],
    options: TaskOptions,
    mark: Callable[[float | None], object] | None = None,
    first: Awaitable[T] | None = None,
) -> T:
    """The coroutine form of :func:`retrying`, for ``async def`` tasks: each attempt awaits a
    fresh ``make()`` (``first`` for the first one, when the call was made already) under the
    timeout. ``mark(deadline)`` is told each attempt's monotonic deadline, then None."""
    retry = 0
    awaitable = first if first is not None else make()
    while True:
        try:
            return await within(awaitable, options.timeout, mark)
        except options.retry_on:
            if retry >= options.retries:
                raise
            retry += 1
        await asyncio.sleep(options.pause(retry))
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
