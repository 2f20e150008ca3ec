"""AsyncExecutor offers what Executor offers (#12 item 19): stats(), cancel(interrupt=True)
and map(progress=True), awaitable where the Executor's block."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
import time

import pytest

import squall

pytestmark = pytest.mark.timeout(90)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stats_cancel_and_progress(cluster, monkeypatch) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)

    async def main() -> None:
        async with squall.AsyncExecutor(cluster.address) as ex:
            stats = await ex.stats()
            assert stats["workers"] == 1 and "client_pending" in stats
            assert [x async for x in ex.map(abs, range(-20, 0), progress=True)] == list(
                range(20, 0, -1)
            )
            running = ex.submit(time.sleep, 30)
            while not running.running():
                await asyncio.sleep(0.01)
            started = time.monotonic()
            assert await ex.cancel(running, interrupt=True) is True
            with pytest.raises(concurrent.futures.CancelledError):
                await running
            assert await ex.cancel(ex.submit(abs, 1)) in (True, False)  # answered, not hung
            assert time.monotonic() - started < 5

    asyncio.run(main())
    assert "20/20" in terminal.getvalue()


def counter(n: int):
    yield from range(n)


def test_the_async_executor_starts_no_thread(monkeypatch) -> None:
    # Its socket is the event loop's (zmq.asyncio): starting the embedded default, submitting,
    # mapping, streaming, asking for stats, cancelling and closing all run on the loop.
    monkeypatch.delenv("SQUALL_INLINE", raising=False)
    before = set(threading.enumerate())  # (other tests' executors may still be closing)
    count_before = threading.active_count()
    seen: list[set[threading.Thread]] = []

    def new_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t not in before and t.is_alive()}

    async def main() -> None:
        async with squall.AsyncExecutor(processes=1, concurrency=50) as ex:
            seen.append(new_threads())
            assert await ex.submit(abs, -3) == 3
            assert [x async for x in ex.map(abs, range(-2000, 0))] == list(range(2000, 0, -1))
            assert [x async for x in ex.stream(counter, 300)] == list(range(300))
            assert (await ex.stats())["workers"] == 1
            assert await ex.cancel(ex.submit(time.sleep, 0.01)) in (True, False)
            seen.append(new_threads())
        seen.append(new_threads())

    asyncio.run(main())
    assert seen == [set(), set(), set()], f"threads started: {seen}"
    assert threading.active_count() <= count_before


def test_messages_are_handled_in_the_order_they_arrived(cluster) -> None:
    # A stream's last values and its end come in separate messages: read out of order (a
    # zmq.asyncio recv future resumed after a drain had read on), a stream ended short.
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=50)

    async def read(ex: squall.AsyncExecutor) -> list[int]:
        return [x async for x in ex.stream(counter, 300)]

    async def main() -> None:
        async with squall.AsyncExecutor(cluster.address) as ex:
            for _ in range(50):
                for values in await asyncio.gather(*[read(ex) for _ in range(8)]):
                    assert values == list(range(300))

    asyncio.run(main())


def test_a_refused_key_fails_the_async_start_at_once(secured) -> None:
    # The asyncio driver never blocks on a send either: with the handshake refused the HELLO
    # waits for room, and the monitor's report still gets through.
    cluster, keys, alice = secured

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(squall.Refused, match="key 'mallory'"):
            await squall.AsyncExecutor(
                cluster.address, auth=str(keys["mallory"]), key="mallory", connect_timeout=5
            ).start()
        assert time.monotonic() - started < 2.0

    asyncio.run(main())
    assert alice.submit(abs, -1).result(timeout=30) == 1


def test_a_loop_that_ends_without_aclose_fails_what_was_pending(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    kept: list[squall.Future[None]] = []

    async def main() -> None:
        ex = await squall.AsyncExecutor(cluster.address).start()
        assert await ex.submit(abs, -1) == 1
        kept.append(ex.submit(time.sleep, 30))

    asyncio.run(main())  # asyncio.run cancels the driver's tasks: nobody can read the answer
    with pytest.raises(squall.ExecutorShutdown):
        kept[0].result(timeout=5)


def test_a_plain_shutdown_in_the_loop_closes_without_blocking_it(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)

    async def main() -> None:
        ex = await squall.AsyncExecutor(cluster.address).start()
        slow = ex.submit(time.sleep, 0.3)
        started = time.monotonic()
        ex.executor.shutdown()  # a threaded executor's would wait here, and the loop with it
        assert time.monotonic() - started < 0.1
        with pytest.raises(squall.ExecutorShutdown):
            ex.submit(abs, 1)
        assert await slow is None  # the pending task still finishes

    asyncio.run(main())
