"""Recovery edge cases found in review, on real processes: stalls, restarts, shutdown."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import time
from pathlib import Path

import pytest

from conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def logged_sleep(log_path: str, key: int, seconds: float) -> int:
    with open(log_path, "a") as log:
        log.write(f"{key} {os.getpid()}\n")
    time.sleep(seconds)
    return key


def tagged_sleep(tag: str, seconds: float) -> str:
    time.sleep(seconds)
    return tag


def runs(log_path: Path) -> collections.Counter[int]:
    lines = log_path.read_text().splitlines()
    return collections.Counter(int(line.split()[0]) for line in lines if line)


def test_a_stalled_client_io_thread_does_not_resubmit_to_a_live_router(cluster, tmp_path) -> None:
    """A client I/O thread that could not run for longer than the liveness window (a caller
    holding the GIL, a suspended process) must not take a live router for a lost one, nor
    have a task the router still holds run twice."""
    cluster.start_router()
    cluster.start_workers(processes=2, concurrency=50)
    log = tmp_path / "runs.log"
    with cluster.executor() as ex:
        long = ex.submit(logged_sleep, str(log), 1, 4.0)
        wait_for(long.running, 10, "task started")
        # The caller holds the GIL for 2 s (a C call that does not release it; also: a
        # suspended process, a GC pause): longer than the client liveness (1 s here).
        ctypes.PyDLL(None).sleep(2)
        assert long.result(timeout=30) == 1
        time.sleep(1.0)
        submitted = cluster.stats()["submitted"]
    assert runs(log)[1] == 1, f"task ran {runs(log)[1]} times (no worker died)"
    assert submitted == 1  # the resubmission of a task the router still had was not taken


def test_router_restart_does_not_deliver_an_old_run_as_another_tasks_result(cluster) -> None:
    """Router task ids restart at 1; a worker still running an old task id delivers its
    result to the new task that got the same id."""
    router = cluster.start_router()
    cluster.start_workers(processes=1, concurrency=50)
    address = cluster.address
    with cluster.executor() as ex:
        assert ex.submit(tagged_sleep, "warm", 0.0).result(timeout=10) == "warm"  # router id 1
        old = ex.submit(tagged_sleep, "OLD", 4.0)  # router id 2
        wait_for(old.running, 10, "task started")
        router.popen.kill()
        router.popen.wait()
        cluster.start("router", "--bind", address, "--insecure")
        # old is resubmitted (new id 1); wait for the worker to be back
        wait_for(
            lambda: (
                (cluster.stats() or {}).get("submitted", 0) >= 1 and cluster.stats()["workers"] >= 1
            ),
            20,
            "router back",
        )
        new = ex.submit(tagged_sleep, "NEW", 6.0)  # new router id 2, same worker
        assert old.result(timeout=30) == "OLD"
        assert new.result(timeout=30) == "NEW"


def slow_gen():
    time.sleep(1.0)
    yield 1
    yield 2


def test_an_async_stream_waiter_on_a_closed_loop_does_not_kill_the_io_thread(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=50)
    ex = cluster.executor()
    try:
        stream = ex.stream(slow_gen)

        async def peek() -> None:
            try:
                await asyncio.wait_for(stream.__anext__(), 0.1)
            except asyncio.TimeoutError:
                pass

        asyncio.run(peek())  # the loop closes with a waiter still registered on the stream
        time.sleep(2.0)  # the first item arrives: Stream._wake -> call_soon_threadsafe raises
        assert ex._driver._thread.is_alive(), "client I/O thread died"
        assert ex.submit(int, "5").result(timeout=10) == 5
    finally:
        ex.shutdown(wait=False)


def endless():
    i = 0
    while True:
        yield i
        i += 1


def test_a_stream_left_running_at_shutdown_is_stopped_on_the_worker(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=50)
    with cluster.executor() as ex:
        stream = ex.stream(endless)
        assert next(stream) == 0
    # the client has gone (DISCONNECT); its generator must not hold a slot forever
    time.sleep(3.0)
    assert cluster.stats()["running"] == 0, "the client's stream still runs on the worker"
