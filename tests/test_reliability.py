"""Nothing lost: killed, stopped, poisoned, draining and restarted processes (faults injected).

Every task here logs each execution (task key and worker PID) to a file, so a test can tell a
result delivered twice (never allowed) from a task run twice (allowed only when its worker died
mid-run).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import random
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import zmq

import squall
from conftest import wait_for
from squall import protocol

pytestmark = pytest.mark.timeout(180)


def logged_sleep(log_path: str, key: int, seconds: float) -> int:
    with open(log_path, "a") as log:
        log.write(f"{key} {os.getpid()}\n")
    time.sleep(seconds)
    return key


def executions(log_path: Path) -> dict[int, list[int]]:
    runs: dict[int, list[int]] = collections.defaultdict(list)
    for line in log_path.read_text().split("\n"):
        if line:
            key, pid = line.split()
            runs[int(key)].append(int(pid))
    return runs


def test_sigkill_workers_mid_run_loses_nothing(cluster, tmp_path: Path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=4, concurrency=50)
    log = tmp_path / "runs.log"
    killed: list[int] = []
    with cluster.executor() as ex:
        futures = [ex.submit(logged_sleep, str(log), i, 0.02) for i in range(10_000)]

        def killer() -> None:
            rng = random.Random(3)
            for _ in range(3):
                time.sleep(rng.uniform(0.3, 0.8))
                victim = rng.choice(cluster.stats()["worker_pids"])
                killed.append(victim)
                os.kill(victim, signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        results = [f.result(timeout=120) for f in futures]
        thread.join()
    assert results == list(range(10_000))  # 0 lost, each future resolved once
    runs = executions(log)
    assert set(runs) == set(range(10_000))
    twice = {key: pids for key, pids in runs.items() if len(pids) > 1}
    assert all(any(pid in killed for pid in pids[:-1]) for pids in twice.values()), (
        "only tasks that had started on a killed worker may run again"
    )
    assert len(killed) == 3


def test_a_stopped_worker_loses_its_tasks_and_its_late_results(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=2, concurrency=20)
    log = tmp_path / "runs.log"
    with cluster.executor() as ex:
        futures = [ex.submit(logged_sleep, str(log), i, 0.5) for i in range(20)]
        time.sleep(0.2)
        victim = cluster.stats()["worker_pids"][0]
        os.kill(victim, signal.SIGSTOP)
        try:
            wait_for(lambda: victim not in cluster.stats()["worker_pids"], 10, "declared dead")
        finally:
            time.sleep(0.5)
            os.kill(victim, signal.SIGCONT)  # it wakes up and finishes what it had
        assert [f.result(timeout=30) for f in futures] == list(range(20))
        wait_for(lambda: cluster.stats()["stale_results"] > 0, 10, "late results arrive")
    runs = executions(log)
    assert all(len(pids) <= 2 for pids in runs.values())
    assert any(victim in pids and len(pids) == 2 for pids in runs.values())


def poison_or_double(x: int) -> int:
    if x < 0:
        os._exit(1)
    time.sleep(0.01)
    return 2 * x


def test_a_poison_task_fails_with_worker_lost_and_the_rest_succeed(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=3, concurrency=50)
    with cluster.executor() as ex:
        good = [ex.submit(poison_or_double, i) for i in range(500)]
        poison = ex.submit(poison_or_double, -1)
        good += [ex.submit(poison_or_double, i) for i in range(500, 1000)]
        assert [f.result(timeout=120) for f in good] == [2 * i for i in range(1000)]
        with pytest.raises(squall.WorkerLost, match="died 3 times"):
            poison.result(timeout=60)
        stats = cluster.stats()
    assert stats["worker_lost"] == 1 and stats["worker_deaths"] == 3


def spin(seconds: float) -> str:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # never yields: the gevent hub is blocked throughout
        pass
    return "done"


def test_a_long_cpu_task_on_a_healthy_worker_is_never_redelivered(cluster) -> None:
    cluster.start_router()  # liveness 1 s, heartbeat 0.2 s
    cluster.start_workers(processes=1, concurrency=10)
    with cluster.executor() as ex:
        assert ex.submit(spin, 6.0).result(timeout=60) == "done"
        stats = cluster.stats()
    assert stats["redelivered"] == 0 and stats["worker_deaths"] == 0


def test_timeouts_on_sleeping_and_spinning_tasks(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    with cluster.executor() as ex:
        started = time.monotonic()
        with pytest.raises(squall.TaskTimeout, match="timeout of 0.5 s"):
            ex.submit(time.sleep, 30, timeout=0.5).result(timeout=20)
        assert time.monotonic() - started < 5
        bystander = ex.submit(time.sleep, 1.0)  # shares the process with the spinner
        with pytest.raises(squall.TaskTimeout, match="blocked its worker"):
            ex.submit(spin, 60.0, timeout=1.0).result(timeout=30)
        assert bystander.result(timeout=30) is None  # handed to the restarted process
        assert ex.submit(abs, -3).result(timeout=30) == 3
        stats = cluster.stats()
    assert stats["timed_out"] == 1


def flaky(path: str, failures: int) -> int:
    counter = Path(path)
    seen = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(seen + 1))
    if seen < failures:
        raise ConnectionError(f"attempt {seen + 1} failed")
    return seen + 1


def test_retries_only_when_asked_and_only_on_the_named_errors(remote, tmp_path) -> None:
    assert (
        remote.submit(flaky, str(tmp_path / "a"), 2, retries=3, backoff=0.01).result(timeout=30)
        == 3
    )
    with pytest.raises(ConnectionError, match="attempt 1 failed"):
        remote.submit(flaky, str(tmp_path / "b"), 2).result(timeout=30)  # not asked: no retry
    with pytest.raises(ConnectionError, match="attempt 1 failed"):
        remote.submit(flaky, str(tmp_path / "c"), 2, retries=3, retry_on=KeyError).result(
            timeout=30
        )
    with pytest.raises(ConnectionError, match="attempt 2 failed"):
        remote.submit(
            flaky, str(tmp_path / "d"), 5, retries=1, retry_on=(ConnectionError,), backoff=0.01
        ).result(timeout=30)


def test_cancel_queued_and_running_tasks(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=1)
    log = tmp_path / "runs.log"
    with cluster.executor() as ex:
        running = ex.submit(logged_sleep, str(log), 1, 30)
        queued = ex.submit(logged_sleep, str(log), 2, 0)
        wait_for(lambda: running.running(), 10, "the first task starts")
        assert queued.cancel() and queued.cancelled()
        assert not running.cancel()  # as concurrent.futures says of running work
        assert ex.cancel(running, interrupt=True)
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(timeout=5)
        # The only slot is free again: this runs at once.
        assert ex.submit(abs, -5).result(timeout=10) == 5
        time.sleep(0.3)
        stats = cluster.stats()
    assert executions(log).keys() == {1}  # the queued task never ran
    assert stats["running"] == 0 and stats["cancelled"] == 2


def test_sigterm_drains_a_worker_without_losing_anything(cluster, tmp_path) -> None:
    cluster.start_router()
    node = cluster.start_workers(2, 20, "--grace", "0.5")
    log = tmp_path / "runs.log"
    with cluster.executor() as ex:
        futures = [ex.submit(logged_sleep, str(log), i, 0.1 + (i % 3)) for i in range(60)]
        time.sleep(0.3)
        victim = next(p for p in node.descendants() if p.pid in cluster.stats()["worker_pids"])
        victim.send_signal(signal.SIGTERM)
        assert sorted(f.result(timeout=60) for f in futures) == list(range(60))
        stats = cluster.stats()
    assert stats["worker_deaths"] == 0  # a drain hands tasks back; it is not a death


def test_router_sigkilled_and_restarted_every_future_resolves_once(cluster, tmp_path) -> None:
    router = cluster.start_router()
    cluster.start_workers(processes=2, concurrency=100)
    address = cluster.address
    log = tmp_path / "runs.log"
    with cluster.executor() as ex:
        futures = [ex.submit(logged_sleep, str(log), i, 0.01) for i in range(5000)]
        time.sleep(0.3)
        router.popen.kill()
        router.popen.wait()
        time.sleep(0.5)
        cluster.start("router", "--bind", address, "--insecure")
        resolved = collections.Counter()
        for f in futures:
            resolved[f.result(timeout=120)] += 1
    assert resolved == collections.Counter(range(5000))


def noop(x: int) -> int:
    return x


def test_a_fast_producer_is_slowed_and_the_router_stays_small(cluster) -> None:
    router = cluster.start_router()
    cluster.start_workers(processes=1, concurrency=200)
    rss_before = psutil.Process(router.pid).memory_info().rss
    peak = rss_before
    with squall.Executor(cluster.address, max_pending=5000) as ex:
        futures = []
        for start in range(0, 200_000, 10_000):
            futures += [ex.submit(noop, i) for i in range(start, start + 10_000)]
            peak = max(peak, psutil.Process(router.pid).memory_info().rss)
            assert len(ex._core.pending) <= 5000 + 1
        assert [f.result(timeout=120) for f in futures] == list(range(200_000))
    growth = (peak - rss_before) / 2**20
    assert growth < 60, f"router grew by {growth:.0f} MB"  # the bound we state: 60 MB


def test_fuzzed_messages_never_hurt_the_router(cluster) -> None:
    router = cluster.start_router()
    cluster.start_workers(processes=2, concurrency=200)
    rng = random.Random(11)
    valid = [
        protocol.encode_submit([protocol.SubmitItem(1, b"h" * 16, 0, 0, (2,), [b"x"])]),
        protocol.encode_result([(1, 0, [b"x"])]),
        protocol.encode_items(
            [protocol.StreamItem(1, 2, True, [protocol.pack_values([b"a", b"b"])])]
        ),
        protocol.encode_ack([(1, 3)]),
        protocol.encode_cancel([1, 2]),
        # (no worker HELLO: a well-formed fake worker is an authentication matter, not garbage)
        protocol.encode_hello(protocol.Role.CLIENT, 1),
        protocol.encode_fn_fetch(b"h" * 16),
        protocol.encode_timeout(b"w", "1 s", [1]),
        protocol.encode_heartbeat(b"w"),
    ]

    def mutate() -> list[bytes]:
        frames = [bytes(f) for f in rng.choice(valid)]
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(frames))
            data = bytearray(frames[i])
            action = rng.randrange(4)
            if action == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif action == 1:
                data = data[: rng.randrange(len(data) + 1)]
            elif action == 2:
                data += rng.randbytes(rng.randrange(1, 8))
            else:
                frames.append(rng.randbytes(rng.randrange(0, 16)))
            frames[i] = bytes(data)
        return frames

    stop = threading.Event()

    def fuzz() -> None:
        with zmq.Context() as ctx:
            for _ in range(20):  # 20 peers x 5,000 messages
                with ctx.socket(zmq.DEALER) as sock:
                    sock.setsockopt(zmq.LINGER, 1000)
                    sock.connect(cluster.address)
                    for _ in range(5000):
                        sock.send_multipart(mutate())
                if stop.is_set():
                    return

    with cluster.executor() as ex:
        thread = threading.Thread(target=fuzz)
        thread.start()
        results = list(ex.map(noop, range(5000)))
        thread.join(120)
        stop.set()
        assert results == list(range(5000))
        assert ex.submit(noop, 7).result(timeout=10) == 7
    assert router.popen.poll() is None
    assert cluster.stats()["internal_errors"] == 0


def test_a_killed_clients_queued_tasks_are_dropped(cluster) -> None:
    import subprocess
    import sys
    import textwrap

    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=1)
    script = textwrap.dedent(f"""
        import time, squall
        ex = squall.Executor({cluster.address!r})
        futures = [ex.submit(time.sleep, 0.5) for _ in range(200)]
        print("submitted", flush=True)
        time.sleep(600)
    """)
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == b"submitted"
        wait_for(lambda: cluster.stats()["queued"] > 100, 10, "tasks queued")
        client.kill()
        client.wait()
        # Gone: its connection closed (or, on a silent network, after 5 liveness windows).
        wait_for(lambda: cluster.stats()["clients"] == 0, 20, "silent client dropped")
        assert cluster.stats()["queued"] == 0
    finally:
        if client.stdout is not None:
            client.stdout.close()
        if client.poll() is None:
            client.kill()
            client.wait()
