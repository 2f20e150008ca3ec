"""AsyncExecutor offers what Executor offers (#12 item 19): stats(), cancel(interrupt=True)
and map(progress=True), awaitable where the Executor's block."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
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
