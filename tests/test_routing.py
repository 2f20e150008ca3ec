"""Scheduling and routing on real processes: delayed tasks, named queues, a global rate limit
across worker processes, unique keys."""

from __future__ import annotations

import collections
import datetime
import os
import threading
import time

import pytest

import squall
from conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def logged(path: str, key: int) -> float:
    """Note one run of task ``key``; return when it started."""
    started = time.time()
    with open(path, "a") as log:
        log.write(f"{key}\n")
    return started


def runs(path: str) -> collections.Counter[int]:
    with open(path) as log:
        return collections.Counter(int(line) for line in log)


def pid() -> int:
    return os.getpid()


def test_a_delayed_task_starts_no_earlier_than_its_delay_and_runs_once(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    log = str(tmp_path / "runs")
    with squall.Executor(cluster.address) as ex:
        submitted = time.time()
        future = ex.options(delay=2).submit(logged, log, 1)
        kept = ex.options(delay=2).enqueue(logged, log, 2)
        assert ex.task_info(kept.id).state == "scheduled"
        assert future.result(timeout=20) >= submitted + 2
        assert kept.result(timeout=20) >= submitted + 2
        assert ex.task_info(kept.id).state == "succeeded"
        at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        assert ex.options(at=at).submit(logged, log, 3).result(timeout=20) >= at.timestamp()
        with pytest.raises(ValueError, match="naive datetime"):
            ex.options(at=datetime.datetime.now())
    time.sleep(0.5)
    assert runs(log) == {1: 1, 2: 1, 3: 1}


def test_10000_tasks_delayed_by_1_to_3_s_all_run_once(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=2, concurrency=500)
    log = str(tmp_path / "runs")
    with squall.Executor(cluster.address) as ex:
        submitted = time.time()
        futures = []
        for delay in (1, 2, 3):
            view = ex.options(delay=delay)
            keys = range(delay * 10_000, delay * 10_000 + 3334)
            futures += [(delay, view.submit(logged, log, k)) for k in keys]
        for delay, future in futures:
            assert future.result(timeout=60) >= submitted + delay
    counts = runs(log)
    assert len(counts) == 3 * 3334 and set(counts.values()) == {1}


def test_workers_run_only_the_queues_they_serve(cluster) -> None:
    cluster.start_router()
    mail = cluster.start_workers(1, 10, "--queues", "emails")
    cluster.start_workers(1, 10)  # the default queue
    with squall.Executor(cluster.address) as ex:
        wait_for(lambda: ex.stats()["workers"] == 2, 10, "two workers")
        mail_pid = next(iter(p for p in ex.stats()["worker_pids"] if p in _children(mail.pid)))
        emails = [ex.options(queue="emails").submit(pid) for _ in range(50)]
        plain = [ex.submit(pid) for _ in range(50)]
        assert {f.result(timeout=20) for f in emails} == {mail_pid}
        assert mail_pid not in {f.result(timeout=20) for f in plain}
        # A queue no worker serves holds its tasks, visibly, until one connects.
        waiting = ex.options(queue="reports").submit(pid)
        wait_for(lambda: ex.stats()["queues"].get("reports", {}).get("queued") == 1, 10, "held")
        assert not waiting.done()
        reports = cluster.start_workers(1, 10, "--queues", "reports,emails")
        assert waiting.result(timeout=20) in _children(reports.pid)


def _children(node_pid: int) -> set[int]:
    import psutil

    return {c.pid for c in psutil.Process(node_pid).children(recursive=True)}


def test_a_global_rate_limit_holds_across_four_worker_processes(cluster, tmp_path) -> None:
    cluster.start_router("--limit", "emails=50/s")
    cluster.start_workers(4, 100, "--queues", "emails")
    log = str(tmp_path / "runs")
    with squall.Executor(cluster.address) as ex:
        wait_for(lambda: ex.stats()["workers"] == 4, 10, "four workers")
        began = time.monotonic()
        view = ex.options(queue="emails")
        starts = sorted(
            f.result(timeout=60) for f in [view.submit(logged, log, i) for i in range(500)]
        )
        took = time.monotonic() - began
    assert 9.0 <= took <= 13.0
    for i, t in enumerate(starts):  # the tasks' own start times: never 51 within 1 s
        assert sum(1 for u in starts[i : i + 51] if u < t + 1.0) <= 50


def test_a_limit_set_at_run_time_applies_at_once(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(2, 100, "--queues", "reports")
    log = str(tmp_path / "runs")
    with squall.Executor(cluster.address) as ex:
        assert ex.set_limit("reports", concurrency=1, rate="20/s") == {
            "queue": "reports",
            "rate": "20/s",
            "concurrency": 1,
        }
        with pytest.raises(ValueError, match="rate"):
            ex.set_limit("reports", rate="fast")
        began = time.monotonic()
        view = ex.options(queue="reports")
        [f.result(timeout=30) for f in [view.submit(logged, log, i) for i in range(40)]]
        assert time.monotonic() - began >= 1.0  # 40 at 20/s: past one second's burst
        assert ex.stats()["queues"]["reports"]["limit"] == {"rate": "20/s", "concurrency": 1}


def test_100_concurrent_enqueues_of_one_key_run_the_function_once(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(2, 100)
    log = str(tmp_path / "runs")
    with squall.Executor(cluster.address) as ex, squall.Executor(cluster.address) as other:
        view, other_view = ex.options(key="invoice-42"), other.options(key="invoice-42")
        futures: list[squall.Future[float]] = []
        barrier = threading.Barrier(20)

        def enqueue(i: int) -> None:
            barrier.wait()
            for _ in range(5):
                futures.append((view if i % 2 else other_view).enqueue(logged, log, i))

        threads = [threading.Thread(target=enqueue, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(futures) == 100 and len({f.id for f in futures}) == 1
        assert len({f.result(timeout=30) for f in futures}) == 1
        with pytest.raises(squall.UsageError, match="key="):
            view.submit(logged, log, 0)
    assert sum(runs(log).values()) == 1
