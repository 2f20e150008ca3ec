"""The operator's view on real processes: events, status, task records, actions, and trace
context from caller to worker (router, worker node and client over real ZeroMQ)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from typing import Any

import pytest

import squall
from conftest import wait_for

pytestmark = pytest.mark.timeout(180)


def add_one(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_subscriber_sees_every_state_change_of_10000_tasks_in_order(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(2, 1000)
    n = 10_000
    with cluster.executor() as ex:
        events = ex.events(timeout=10)
        assert list(ex.map(add_one, range(n))) == list(range(1, n + 1))
        seen: dict[str, list[str]] = {}
        for event in events:
            if event["type"].startswith("task."):
                seen.setdefault(event["id"], []).append(event["type"])
                if len(seen) == n and all(len(v) == 3 for v in seen.values()):
                    break
        events.close()
    assert len(seen) == n
    orders = {tuple(v) for v in seen.values()}
    assert orders == {("task.submitted", "task.started", "task.succeeded")}


def test_status_agrees_with_stats_and_names_failures(cluster) -> None:
    cluster.start_router()
    node = cluster.start_workers(2, 100)
    with cluster.executor() as ex:
        assert list(ex.map(add_one, range(50))) == list(range(1, 51))
        with pytest.raises(ValueError):
            ex.submit(fail, 7).result()
        stats = ex.stats()
        status = ex.status()
        for key in ("submitted", "completed", "failed", "workers", "queued", "running"):
            assert status["totals"][key] == stats[key], key
        assert sorted(w["pid"] for w in status["workers"]) == stats["worker_pids"]
        node_pids = {p.pid for p in node.descendants()}
        assert {w["pid"] for w in status["workers"]} <= node_pids
        assert all(w["host"] == os.uname().nodename for w in status["workers"])
        assert status["outcomes"]["succeeded"] == 50 and status["outcomes"]["failed"] == 1
        (failure,) = status["recent_failures"]
        assert failure["name"].endswith("fail") and failure["error_message"] == "bad input 7"
        wait_for(lambda: all(w["rss"] for w in ex.status()["workers"]), 10, "no worker RSS")
        record = ex.inspect(failure["id"])
        assert "ValueError: bad input 7" in record["traceback"]
        with pytest.raises(ValueError, match="no task"):
            ex.inspect("00000000000000ff")


def test_an_operator_cancels_another_clients_queued_task(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(1, 1)
    with cluster.executor() as owner, cluster.executor() as operator:
        busy = owner.submit(nap, 3)
        queued = owner.submit(nap, 0)
        wait_for(
            lambda: operator.tasks(state="queued")["tasks"], 10, "the second task never queued"
        )
        (task,) = operator.tasks(state="queued")["tasks"]
        assert operator.cancel_by_id(task["id"]) is True
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result(timeout=10)
        assert busy.result(timeout=10) == 3
        assert operator.inspect(task["id"])["state"] == "cancelled"


def test_a_failed_background_task_is_retried_and_a_worker_drained(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(1, 10)
    with cluster.executor() as ex:
        future = ex.enqueue(fail, 1)
        with pytest.raises(ValueError):
            future.result(timeout=10)
        again = ex.retry(future.id)
        assert again != future.id
        with pytest.raises(ValueError):
            ex.attach(again).result(timeout=10)
        assert ex.task_info(again).state == "failed"
        with pytest.raises(ValueError, match="only a failed one"):
            ex.retry(_succeeded(ex))
        (pid,) = ex.stats()["worker_pids"]
        assert ex.drain_worker(pid)["drained"]
        late = ex.submit(add_one, 1)
        time.sleep(1.0)
        assert not late.done()  # the only worker takes nothing new
        assert ex.status()["workers"][0]["state"] == "draining"
        late.cancel()


def _succeeded(ex: Any) -> str:
    done = ex.enqueue(add_one, 1)
    assert done.result(timeout=10) == 2
    return str(done.id)


def read_trace() -> tuple[str, str]:
    """In the worker: the trace id and span id of the span the task runs under."""
    from opentelemetry import trace

    import squall.log

    squall.log.get_logger("tests.task").warning("inside the task")
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def test_a_task_joins_its_callers_trace_and_its_log_lines_carry_ids(cluster) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    cluster.start_router()
    node = cluster.start_workers(1, 10)
    provider = TracerProvider()
    tracer = provider.get_tracer("tests")
    with cluster.executor() as ex:
        with tracer.start_as_current_span("caller") as span:
            caller = span.get_span_context()
            trace_id, _ = ex.submit(read_trace).result(timeout=10)
        assert trace_id == f"{caller.trace_id:032x}"  # taken from the current span
        given = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
        assert ex.submit(read_trace, traceparent=given).result(timeout=10)[0] == "ab" * 16
        untraced = ex.submit(read_trace)
        assert untraced.result(timeout=10)[0] == "0" * 32  # no trace: none made up
        with pytest.raises(ValueError, match="not a W3C traceparent"):
            ex.submit(read_trace, traceparent="00-bad")
    assert trace.get_current_span().get_span_context().is_valid is False
    wait_for(lambda: "inside the task" in node.output(), 10, "the task's line never came")
    lines = [line for line in node.output().splitlines() if "inside the task" in line]
    assert len(lines) == 3 and all("task_id=" in line for line in lines)
    assert sum(f"trace_id={'ab' * 16}" in line for line in lines) == 1


class Flaky:
    """Fails its first two calls in each worker process, then succeeds."""

    calls = 0


def flaky(x: int) -> int:
    Flaky.calls += 1
    if Flaky.calls <= 2:
        raise ConnectionError(f"try {Flaky.calls} failed")
    return x


def test_a_workers_retries_are_events_and_attempts(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(1, 10)
    with cluster.executor() as ex, ex.events(timeout=5) as events:
        future = ex.submit(flaky, 5, retries=3, backoff=0.01)
        assert future.result(timeout=10) == 5
        kinds = []
        for event in events:
            kinds.append(event)
            if event["type"] == "task.succeeded":
                break
    assert [e["type"] for e in kinds] == [
        "task.submitted",
        "task.started",
        "task.retried",
        "task.retried",
        "task.succeeded",
    ]
    retried = kinds[2]
    assert retried["error_type"] == "ConnectionError"
    assert retried["error_message"] == "try 1 failed"
    assert kinds[-1]["attempt"] == 3
    with cluster.executor() as ex:
        (record,) = ex.tasks(state="succeeded")["tasks"]
        assert record["attempts"] == 3
        assert ex.stats()["retried"] == 2


def test_with_keys_only_an_operator_sees_the_fleet_or_acts_on_others_tasks(secured) -> None:
    from squall.auth import CLIENT, keygen_peer

    cluster, keys, alice = secured
    peer = keygen_peer(keys["router"], "ops", CLIENT, operator=True)
    os.kill(cluster.router.pid, signal.SIGHUP)  # the router reads its allow-lists again
    time.sleep(0.5)
    with squall.Executor(cluster.address, auth=str(peer.folder), key="ops") as ops:
        busy = alice.submit(nap, 0.5)
        assert ops.status()["workers"][0]["state"] == "up"
        assert busy.result(timeout=10) == 0.5
        assert ops.tasks(state="succeeded")["tasks"]
        with pytest.raises(squall.Refused, match="operator's key"):
            alice.status()
        with pytest.raises(squall.Refused, match="operator's key"):
            alice.tasks()
        with pytest.raises(squall.Refused, match="operator's key"):
            alice.events()
        held = ops.submit(nap, 5)
        wait_for(lambda: ops.tasks(state="running")["tasks"], 10, "ops' task never started")
        (running,) = ops.tasks(state="running")["tasks"]
        assert alice.cancel_by_id(running["id"]) is False  # not alice's: refused
        assert ops.cancel_by_id(running["id"]) is True
        with pytest.raises(concurrent.futures.CancelledError):
            held.result(timeout=10)
