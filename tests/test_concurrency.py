"""Thousands of I/O-bound tasks at once on ONE worker process, thanks to gevent."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.timeout(120)


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)  # monkey-patched on the worker: yields to the other tasks
    return os.getpid()


def test_ten_thousand_sleeps_on_one_process(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10_000)
    with cluster.executor() as ex:
        list(ex.map(sleep_then_pid, [0.0] * 100))  # warm up: function body fetched once
        started = time.perf_counter()
        pids = list(ex.map(sleep_then_pid, [0.2] * 10_000))
        elapsed = time.perf_counter() - started
    assert len(pids) == 10_000
    assert len(set(pids)) == 1, "all ran in the one worker process"
    # One at a time this is 2,000 s; concurrently it is one 0.2 s sleep plus overhead.
    assert elapsed < 2.0, f"10,000 x 0.2 s sleeps took {elapsed:.2f} s"


def test_concurrency_limit_is_respected(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=50)
    with cluster.executor() as ex:
        started = time.perf_counter()
        list(ex.map(sleep_then_pid, [0.3] * 150))
        elapsed = time.perf_counter() - started
    # 150 tasks, 50 at a time: three waves of 0.3 s; never all at once.
    assert elapsed >= 0.85, f"ran more than 50 at once ({elapsed:.2f} s)"
