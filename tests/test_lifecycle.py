"""The embedded default starts, stops by PID, and leaves no orphans; the CLI fails in one line."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import squall
from conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(90)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _squall_pids(stats: dict) -> set[int]:
    return set(stats["embedded_pids"].values()) | set(stats["worker_pids"])


def test_embedded_default_runs_tasks_and_shutdown_stops_every_process() -> None:
    ex = squall.Executor(processes=2, concurrency=100)
    try:
        assert ex.submit(lambda x: x * 2, 21).result(timeout=30) == 42
        stats = ex.stats()
        pids = _squall_pids(stats)
        assert len(pids) == 4  # router, node, 2 worker processes
        assert stats["workers"] == 2
        assert ex.address.startswith("ipc://")
        directory = ex.address[len("ipc://") :].rsplit("/", 1)[0]
        assert os.stat(directory).st_mode & 0o777 == 0o700  # no other local user gets in
    finally:
        ex.shutdown()
    assert all(_gone(pid) for pid in pids)
    assert not os.path.exists(directory)


def test_no_orphans_when_the_parent_is_sigkilled(tmp_path) -> None:
    script = textwrap.dedent("""
        import json, sys, time
        import squall
        ex = squall.Executor(processes=2, concurrency=10)
        stats = ex.stats()
        pids = list(stats["embedded_pids"].values()) + stats["worker_pids"]
        print(json.dumps(pids), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 4 and all(not _gone(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_for(lambda: all(_gone(pid) for pid in pids), 15, "children outlived their parent")
    finally:
        parent.stdout.close()
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_map_of_nothing_and_shutdown_without_waiting() -> None:
    with squall.Executor(processes=1, concurrency=1) as ex:
        assert list(ex.map(abs, [])) == []
        busy = ex.submit(time.sleep, 2)  # holds the only slot
        queued = ex.submit(time.sleep, 30)  # waits behind it: never starts
        wait_for_running(busy)
        started = time.monotonic()
        ex.shutdown(wait=False, cancel_futures=True)
        assert time.monotonic() - started < 10
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(timeout=10)
    assert busy.result(timeout=10) is None  # a running call is not cancelled: it completes


def wait_for_running(future: concurrent.futures.Future[object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not future.running() and not future.done():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)


def _run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squall", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version() -> None:
    result = _run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"squall {squall.__version__}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["router", "--bind", "tcp://127.0.0.1:1", "--bogus"], "unrecognized arguments: --bogus"),
        (["router"], "the following arguments are required: --bind"),
        (["worker", "--connect", "nonsense"], "is not a ZeroMQ address"),
        (["worker", "--connect", "tcp://127.0.0.1:1", "--processes", "0"], "at least 1"),
        (["router", "--bind", "tcp://0.0.0.0:5555"], "refusing to listen on tcp://0.0.0.0:5555"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    result = _run_cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_address_in_use_is_one_line(cluster) -> None:
    cluster.start_router()
    result = _run_cli("router", "--bind", cluster.address, "--insecure")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot bind" in lines[0] and "in use" in lines[0], result.stderr


def test_router_logs_where_it_listens_as_json(cluster) -> None:
    port = free_port()
    proc = cluster.start("router", "--bind", f"tcp://127.0.0.1:{port}", "--insecure", "--log-json")
    line = wait_for(
        lambda: next(
            (json.loads(x) for x in proc.output().splitlines() if "router listening" in x), None
        ),
        15,
        "startup log",
    )
    assert line["endpoint"] == f"tcp://127.0.0.1:{port}" and line["process"] == "router"


def test_squall_bench_quick_prints_its_table() -> None:
    result = _run_cli("bench", "--quick", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| no-op throughput" in result.stdout and "tasks/s" in result.stdout
    assert "| stream" in result.stdout and "round trip p50" in result.stdout
