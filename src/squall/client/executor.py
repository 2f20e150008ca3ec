"""``squall.Executor``: a ``concurrent.futures.Executor`` that runs calls on squall workers."""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from squall import serialization
from squall.client._core import ClientCore
from squall.client.embedded import LocalCluster
from squall.client.future import Future
from squall.client.sync import ThreadDriver
from squall.config import validate_address
from squall.errors import ExecutorShutdown, StartupError

T = TypeVar("T")

#: Calls pickled per hand-over to the I/O thread in ``map``: big enough to batch, small enough
#: that the first tasks start while the rest are still being pickled.
MAP_BATCH = 1000

_live: weakref.WeakSet[Executor] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for executor in list(_live):
        executor.shutdown(wait=False, cancel_futures=True)


def _apply_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    return [fn(*args) for args in chunk]


class Executor(concurrent.futures.Executor):
    """Run Python callables on squall workers.

    With no address, starts the embedded default: a private router and one worker node as
    subprocesses on this machine, stopped again by :meth:`shutdown` (or at interpreter exit).

    Args:
        address: a running router's address (``tcp://host:port``); None for the embedded default.
        processes: embedded default only: worker processes (default: number of cores).
        concurrency: embedded default only: tasks at once per worker process.
        connect_timeout: seconds to wait for the router (and embedded workers) to be ready.

    Raises:
        StartupError: the router (or the embedded processes) did not come up in time.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        processes: int | None = None,
        concurrency: int = 1000,
        connect_timeout: float = 30.0,
    ) -> None:
        self._cluster: LocalCluster | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._core = ClientCore()
        if address is None:
            self._cluster = LocalCluster(processes or os.cpu_count() or 1, concurrency)
            address = self._cluster.start()
        self.address = validate_address(address)
        self._driver = ThreadDriver(self.address, self._core)
        _live.add(self)
        try:
            self._driver.start(connect_timeout)
            if self._cluster is not None:
                self._wait_for_workers(self._cluster.processes, connect_timeout)
        except BaseException:
            self._close(wait=False)
            raise

    def _wait_for_workers(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._cluster is not None
            self._cluster.check()
            if self._driver.stats()["workers"] >= count:
                return
            if time.monotonic() > deadline:
                raise StartupError(f"{count} embedded worker processes not ready in {timeout:g} s")
            time.sleep(0.05)

    # -- concurrent.futures.Executor --------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a worker.

        Raises:
            SerializationError: ``fn`` or an argument cannot be pickled (named in the message);
                nothing was sent.
            ExecutorShutdown: the executor was shut down.
        """
        self._check_open()
        fn_hash, body = serialization.dumps_function(fn)
        future: Future[T] = Future()
        self._enqueue(fn_hash, body, [(serialization.dumps_call(args, kwargs), future)])
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``concurrent.futures.Executor.map``: all calls are submitted now, results come
        in order. ``chunksize`` > 1 runs that many calls per task.
        """
        self._check_open()
        if chunksize > 1:
            chunks = _chunks(zip(*iterables, strict=False), chunksize)
            nested = self.map(functools.partial(_apply_chunk, fn), chunks, timeout=timeout)
            return itertools.chain.from_iterable(nested)
        fn_hash, body = serialization.dumps_function(fn)
        futures: list[Future[T]] = []
        batch: list[tuple[list[Any], Future[T]]] = []
        for args in zip(*iterables, strict=False):
            future: Future[T] = Future()
            batch.append((serialization.dumps_call(args, {}), future))
            futures.append(future)
            if len(batch) >= MAP_BATCH:
                self._enqueue(fn_hash, body, batch)
                batch = []
        if batch:
            self._enqueue(fn_hash, body, batch)
        return _in_order(futures, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; with ``wait``, let pending tasks finish first.

        Tasks still pending when the client closes (``wait=False``, or cancelled) resolve with
        :class:`ExecutorShutdown` rather than hanging. The embedded router and workers are
        stopped.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if cancel_futures:
            for future in self._core.futures():
                future.cancel()
        self._close(wait=wait)

    def _close(self, wait: bool) -> None:
        if wait:
            concurrent.futures.wait(self._core.futures())
        self._closed = True
        self._driver.close()
        self._core.fail_all(ExecutorShutdown("the executor was shut down before the task ended"))
        if self._cluster is not None:
            self._cluster.stop()
        _live.discard(self)

    # -- squall extras ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The router's counters and this client's, for monitoring and tests."""
        stats = self._driver.stats()
        stats["client_bodies_sent"] = self._core.bodies_sent
        stats["client_pending"] = len(self._core.pending)
        if self._cluster is not None:
            stats["embedded_pids"] = self._cluster.pids
        return stats

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorShutdown("cannot schedule new tasks after shutdown")

    def _enqueue(
        self, fn_hash: bytes, body: bytes, calls: list[tuple[list[Any], Future[Any]]]
    ) -> None:
        if self._core.add(fn_hash, body, calls):
            self._driver.wake()

    def __repr__(self) -> str:
        where = "embedded" if self._cluster else self.address
        return f"<squall.Executor {where} pending={len(self._core.pending)}>"


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _in_order(futures: list[Future[T]], timeout: float | None) -> Iterator[T]:
    """Yield results in submission order; cancel what is left if the caller stops early."""
    end = None if timeout is None else time.monotonic() + timeout
    futures.reverse()  # pop from the end: each result is released once yielded
    try:
        while futures:
            future = futures.pop()
            yield future.result(None if end is None else max(0.0, end - time.monotonic()))
    finally:
        for future in futures:
            future.cancel()
