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


def test_ssl_is_patched_when_a_task_imports_it(cluster) -> None:
    """Workers leave ssl (6 MB with libssl) unimported until a task needs it, then patch it on
    import: a TLS wait yields to other tasks as a plain socket's does."""
    import socket

    # Nested, so sent by value: a worker importing this test module would import pytest's.
    def modules_loaded(names: list[str]) -> list[str]:
        import sys

        return [name for name in names if name in sys.modules]

    def tls_handshake_with(port: int) -> tuple[str, str]:
        """Waits a second on a TLS handshake that never comes, as a task calling an HTTPS
        service slow to answer would."""
        import socket
        import ssl

        sock = socket.create_connection(("127.0.0.1", port), timeout=1.0)
        try:
            ssl.create_default_context().wrap_socket(sock, server_hostname="localhost")
        except OSError as exc:  # the handshake timed out
            return type(exc).__name__, ssl.SSLContext.__module__
        finally:
            sock.close()
        return "handshake completed", ""

    cluster.start_router()
    # At level info, structlog is loaded for the first line logged, and imports asyncio and ssl.
    cluster.start_workers(1, 10, "--log-level", "warning")
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (in the kernel), never answers
    try:
        with cluster.executor() as ex:
            assert ex.submit(modules_loaded, ["ssl", "asyncio", "hashlib"]).result(30) == []
            waiting = ex.submit(tls_handshake_with, listener.getsockname()[1])
            time.sleep(0.3)  # the handshake is under way
            assert ex.submit(modules_loaded, ["ssl"]).result(0.6) == ["ssl"], "the wait blocked"
            assert not waiting.done()
            error, context_module = waiting.result(30)
            assert error in ("TimeoutError", "timeout"), error
            assert context_module == "gevent.ssl"
    finally:
        listener.close()
