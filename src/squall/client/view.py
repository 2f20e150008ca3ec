"""``ex.options(timeout=..., retries=...)``: a view of an executor that runs its tasks so.

The clean way to give a task options when its function has arguments of its own named
``timeout``, ``retries``, ``retry_on`` or ``backoff``: a view's ``submit``, ``map`` and
``stream`` pass every keyword argument to the function untouched and take the options from the
view instead. The options are checked when the view is made (a bad value raises there, in one
line), views chain (``ex.options(timeout=1).options(retries=2)`` has both), and a view costs
nothing to make: keep one, or make one per call.

A view is generic over what it views: anything with ``_submit_with`` and ``_stream_with``
(:class:`OptionsTarget`), and ``_map_with`` for the ``map`` of :class:`ExecutorView` (a
``squall.Executor``) or :class:`AsyncExecutorView` (a ``squall.AsyncExecutor``).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from squall.client.background import calls_of
from squall.client.future import Future
from squall.client.stream import Stream
from squall.options import ROUTING, TaskOptions

T = TypeVar("T")
P = ParamSpec("P")


class _Unset(enum.Enum):
    """An option not given to ``options()``: the view keeps the one it has (None is a value,
    ``timeout=None`` lifts a time limit set before)."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset.UNSET

#: what ``retry_on`` takes: an exception class or a tuple of them
RetryOn = type[Exception] | tuple[type[Exception], ...]


def merged(options: TaskOptions, **given: Any) -> TaskOptions:
    """``options`` with the given ones (those not UNSET) applied, checked now (TypeError,
    ValueError)."""
    return options.merged(**{name: v for name, v in given.items() if v is not UNSET})


class OptionsTarget(Protocol):
    """What a view needs of its executor: submit and stream with the options given apart
    from the function's keyword arguments (the executor's own ``submit(**kwargs)`` takes its
    options out of them)."""

    def _submit_with(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None,
    ) -> Future[Any]: ...

    def _stream_with(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None,
    ) -> Stream[Any]: ...


E = TypeVar("E", bound=OptionsTarget)
V = TypeVar("V", bound="OptionsView[Any]")


class OptionsView(Generic[E]):
    """``submit`` and ``stream`` of executor ``target`` with task ``options``.

    Args:
        target: the executor viewed.
        options: the options every task submitted through this view runs with.
    """

    def __init__(self, target: E, options: TaskOptions) -> None:
        self._target = target
        self._options = options

    @property
    def executor(self) -> E:
        """The executor this is a view of."""
        return self._target

    @property
    def task_options(self) -> TaskOptions:
        """The options this view's tasks run with."""
        return self._options

    def options(
        self: V,
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
    ) -> V:
        """A view with these options changed, the others as here.

        Raises:
            TypeError, ValueError: an option's value is wrong (see ``Executor.options``).
        """
        given = dict(locals())  # the options, exactly as passed (nothing else is bound yet)
        del given["self"]
        return type(self)(self._target, merged(self._options, **given))

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """As the executor's ``submit``, with this view's options; every keyword argument,
        ``timeout`` and ``retries`` too, goes to ``fn``."""
        return self._target._submit_with(fn, args, kwargs, self._options)

    def stream(
        self, fn: Callable[P, Iterable[T] | AsyncIterable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Stream[T]:
        """As the executor's ``stream``, with this view's options (its ``timeout`` bounds the
        whole generator run; it is run again only if it fails before yielding anything)."""
        return self._target._stream_with(fn, args, kwargs, self._options)

    def __repr__(self) -> str:
        defaults = TaskOptions()
        shown = ", ".join(
            f"{name}={getattr(self._options, name)!r}"
            for name in ("timeout", "retries", "retry_on", "backoff", *ROUTING)
            if getattr(self._options, name) != getattr(defaults, name)
        )
        return f"<squall options({shown}) of {self._target!r}>"


class MapTarget(OptionsTarget, Protocol):
    """An executor whose ``map`` takes task options: a ``squall.Executor``."""

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
    ) -> Iterator[T]: ...

    def _enqueue_calls(
        self,
        fn: Callable[..., T],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        keep: float | None,
        options: TaskOptions | None = None,
    ) -> list[Future[T]]: ...


M = TypeVar("M", bound=MapTarget)


class ExecutorView(OptionsView[M]):
    """What ``squall.Executor.options()`` returns: its ``submit``, ``map``, ``stream``,
    ``enqueue`` and ``enqueue_map`` with task options."""

    def enqueue(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """As ``Executor.enqueue`` (a background task), with this view's options; every
        keyword argument goes to ``fn`` (the outcome is kept for the router's
        ``--result-ttl``; ``enqueue_map`` takes a ``keep``)."""
        return self._target._enqueue_calls(fn, [(args, kwargs)], None, self._options)[0]

    def enqueue_map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], keep: float | None = None
    ) -> list[Future[T]]:
        """As ``Executor.enqueue_map``, each task with this view's options."""
        return self._target._enqueue_calls(fn, calls_of(iterables), keep, self._options)

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
        """As ``Executor.map``, each task with this view's options.

        Two timeouts, as with ``concurrent.futures``: ``timeout`` here is map's own, seconds
        from now until every result must have arrived (else ``TimeoutError`` and the calls
        not started are withdrawn); the view's ``timeout`` option bounds each task on its
        worker (``squall.TaskTimeout`` for that result). With ``chunksize`` above 1, a task
        is one chunk of calls: the options apply to the chunk.
        """
        return self._target._map_with(
            fn,
            iterables,
            self._options,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
            progress=progress,
        )


class AsyncMapTarget(OptionsTarget, Protocol):
    """An executor whose asyncio ``map`` takes task options: a ``squall.AsyncExecutor``."""

    def _map_with(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        options: TaskOptions | None,
        *,
        timeout: float | None,
        ordered: bool,
        progress: bool,
    ) -> AsyncIterator[T]: ...


A = TypeVar("A", bound=AsyncMapTarget)


class AsyncExecutorView(OptionsView[A]):
    """For ``squall.AsyncExecutor.options()``: its ``submit``, ``map`` and ``stream`` with
    task options."""

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        ordered: bool = True,
        progress: bool = False,
    ) -> AsyncIterator[T]:
        """As ``AsyncExecutor.map``, each task with this view's options (``timeout`` is the
        map's overall deadline; the view's ``timeout`` option bounds each task)."""
        return self._target._map_with(
            fn, iterables, self._options, timeout=timeout, ordered=ordered, progress=progress
        )
