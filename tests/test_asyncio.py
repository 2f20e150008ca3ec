"""asyncio callers: awaitable futures, async streams, AsyncExecutor; async def tasks."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import squall

pytestmark = pytest.mark.timeout(120)


def double(x: int) -> int:
    return 2 * x


def counter(n: int):
    yield from range(n)


async def _timer_lateness(stop: asyncio.Event, period: float = 0.005) -> list[float]:
    """How late each tick of a periodic timer on the loop ran: the loop's stalls, one sample
    per tick."""
    late: list[float] = []
    while not stop.is_set():
        expected = time.perf_counter() + period
        await asyncio.sleep(period)
        late.append(time.perf_counter() - expected)
    return late


def test_ten_thousand_awaited_submits_never_block_the_loop(cluster) -> None:
    # One worker process: on 2 cores, every extra busy process is scheduling noise in the lag.
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=1000)
    remote = cluster.executor()

    async def main() -> tuple[list[int], list[int], list[float]]:
        stop = asyncio.Event()
        timer = asyncio.create_task(_timer_lateness(stop))
        await asyncio.sleep(0.05)
        # Gathered 50 at a time: pickling 50 calls takes the loop's thread ~3 ms, so the loop
        # itself never has a reason to stall for 50 ms; a submit that waited for the router
        # (50 round trips per gather) would stall it past 50 ms at every gather.
        results: list[int] = []
        for start in range(0, 10_000, 50):
            results += await asyncio.gather(
                *(remote.submit(double, i) for i in range(start, start + 50))
            )
        streamed = [item async for item in remote.stream(counter, 1000)]
        stop.set()
        return results, streamed, await timer

    with remote:
        results, streamed, late = asyncio.run(main())
    assert results == [2 * i for i in range(10_000)]
    assert streamed == list(range(1000))
    # Measured robustly: the 99th percentile of the ticks, so that the odd preemption of this
    # process on a loaded 2-core machine (router and worker beside it) is not counted as the
    # loop's stall, while a loop that blocks on squall at every gather fails by far.
    late.sort()
    p99 = late[int(len(late) * 0.99)]
    # Enough ticks for a 99th percentile (the run takes about a second; faster is fine).
    assert len(late) >= 100, "the timer hardly ran"
    assert p99 < 0.05, f"the loop stalled: p99 {p99 * 1000:.0f} ms, worst {late[-1] * 1000:.0f} ms"


def test_async_executor(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=100)

    async def main() -> None:
        async with squall.AsyncExecutor(cluster.address) as ex:
            assert await ex.submit(double, 21) == 42
            assert [x async for x in ex.map(double, range(50))] == [2 * i for i in range(50)]
            unordered = [x async for x in ex.map(double, range(50), ordered=False)]
            assert sorted(unordered) == [2 * i for i in range(50)]
            assert [x async for x in ex.stream(counter, 5)] == [0, 1, 2, 3, 4]
            futures = [ex.submit(time.sleep, 0.3 - 0.1 * i) for i in range(3)]
            done = [f async for f in squall.as_completed(futures, timeout=10)]
            assert done == futures[::-1]
        assert ex.executor._closed

    asyncio.run(main())


async def nap(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()


def test_ten_thousand_async_def_tasks_on_one_process(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10_000)
    with cluster.executor() as ex:
        list(ex.map(nap, [0.0] * 10))  # warm up
        started = time.perf_counter()
        pids = list(ex.map(nap, [0.2] * 10_000))
        elapsed = time.perf_counter() - started
    assert len(set(pids)) == 1
    assert elapsed < 2.0, f"10,000 async sleeps of 0.2 s took {elapsed:.2f} s"


def test_async_and_plain_tasks_share_a_process(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=100)
    with cluster.executor() as ex:
        started = time.perf_counter()
        futures = [ex.submit(nap, 0.5) for _ in range(20)]
        futures += [ex.submit(time.sleep, 0.5) for _ in range(20)]
        for f in futures:
            f.result(timeout=10)
        assert time.perf_counter() - started < 1.5  # all 40 ran at once
