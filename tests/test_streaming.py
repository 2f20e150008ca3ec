"""ex.stream: values as they are yielded, bounded memory, early close, errors in place."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest

import squall

pytestmark = pytest.mark.timeout(120)


def slow_counter(n: int, pause: float):
    for i in range(n):
        yield i
        time.sleep(pause)


def test_first_item_arrives_while_the_generator_still_runs(remote: squall.Executor) -> None:
    started = time.perf_counter()
    stream = remote.stream(slow_counter, 4, 0.5)
    arrivals = []
    for value in stream:
        arrivals.append((value, time.perf_counter() - started))
    assert [v for v, _ in arrivals] == [0, 1, 2, 3]
    assert arrivals[0][1] < 0.4, arrivals  # the generator ends only after ~2 s
    assert arrivals[-1][1] >= 1.4, arrivals


def failing_after(n: int):
    yield from range(n)
    raise ValueError(f"broke after {n}")


def test_exception_is_raised_where_it_happened(remote: squall.Executor) -> None:
    received = []
    with pytest.raises(ValueError, match="broke after 3"):
        for value in remote.stream(failing_after, 3):
            received.append(value)
    assert received == [0, 1, 2]


def marks_finally(directory: str, n: int):
    try:
        for i in range(n):
            yield i
            time.sleep(0.01)
    finally:
        Path(directory, "finally-ran").write_text(str(os.getpid()))


def test_breaking_out_closes_the_remote_generator_and_frees_its_slot(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=1)  # one slot: the next task needs it back
    with cluster.executor() as ex:
        for value in ex.stream(marks_finally, str(tmp_path), 1_000_000):
            if value == 5:
                break
        marker = tmp_path / "finally-ran"
        deadline = time.monotonic() + 10
        while not marker.exists():
            assert time.monotonic() < deadline, "the remote generator's finally never ran"
            time.sleep(0.05)
        assert int(marker.read_text()) in cluster.stats()["worker_pids"]
        assert ex.submit(abs, -7).result(timeout=10) == 7  # the slot is free again
        assert cluster.stats()["running"] == 0


def test_close_and_context_manager_close_the_stream(remote: squall.Executor, tmp_path) -> None:
    with remote.stream(marks_finally, str(tmp_path), 1_000_000) as stream:
        assert next(stream) == 0
    deadline = time.monotonic() + 10
    while not (tmp_path / "finally-ran").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert list(stream) == []  # a closed stream yields nothing more


def tiny_items(n: int):
    yield from range(n)


def _rss(pids: list[int]) -> dict[int, int]:
    return {pid: psutil.Process(pid).memory_info().rss for pid in pids}


def test_a_million_items_to_a_slow_reader_keep_memory_bounded(cluster) -> None:
    router = cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    worker_pid = cluster.stats()["worker_pids"][0]
    pids = [router.pid, worker_pid, os.getpid()]
    with cluster.executor() as ex:
        n = 1_000_000
        stream = ex.stream(tiny_items, n)
        assert next(stream) == 0
        time.sleep(1.0)  # a slow reader: without backpressure the generator would run ahead
        before = _rss(pids)
        peak = dict(before)
        expected = 1
        sampled_at = time.monotonic()
        for value in stream:
            assert value == expected
            expected += 1
            if time.monotonic() - sampled_at > 0.25:
                for pid, rss in _rss(pids).items():
                    peak[pid] = max(peak[pid], rss)
                sampled_at = time.monotonic()
                time.sleep(0.02)  # stay slower than the generator
        assert expected == n
    growth = {pid: (peak[pid] - before[pid]) / 2**20 for pid in pids}
    # Unbounded buffering of a million items would take hundreds of MB somewhere.
    assert all(mb < 40 for mb in growth.values()), growth


async def async_counter(n: int):
    import asyncio

    for i in range(n):
        await asyncio.sleep(0.001)
        yield i


def test_async_generators_stream_too(remote: squall.Executor) -> None:
    assert list(remote.stream(async_counter, 20)) == list(range(20))


def test_submit_of_a_generator_function_collects_a_list(remote: squall.Executor) -> None:
    assert remote.submit(tiny_items, 5).result(timeout=30) == [0, 1, 2, 3, 4]
    assert remote.submit(async_counter, 3).result(timeout=30) == [0, 1, 2]


def test_many_streams_at_once_from_threads(remote: squall.Executor) -> None:
    results: dict[int, list[int]] = {}

    def read(k: int) -> None:
        results[k] = list(remote.stream(tiny_items, 500 + k))

    threads = [threading.Thread(target=read, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {k: list(range(500 + k)) for k in range(8)}


def test_stream_of_a_non_iterable_fails_clearly(remote: squall.Executor) -> None:
    with pytest.raises(TypeError, match="needs a generator or iterable"):
        list(remote.stream(abs, -1))
