"""What the router tells an operator: failures logged (rate-limited), outcomes counted
apart, debug events for dispatch."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Cluster, wait_for
from squall import protocol
from squall.router.server import FailureLog

pytestmark = pytest.mark.timeout(120)


def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


def test_failures_are_logged_at_most_n_a_second_and_the_rest_counted() -> None:
    now = [0.0]
    lines: list[tuple[str, dict[str, Any]]] = []
    failures = FailureLog(
        per_second=10, clock=lambda: now[0], emit=lambda e, **kw: lines.append((e, kw))
    )
    outcome = protocol.error_outcome("builtins.ValueError", "bad input", "", (b"",), "mod.fail")
    for task_id in range(25):
        failures.note(task_id, b"h" * 16, outcome)
    assert len(lines) == 10
    assert lines[0] == (
        "task failed",
        {
            "task_id": "0000000000000000",
            "function": "mod.fail",
            "error": "builtins.ValueError",
            "message": "bad input",
        },
    )
    now[0] += 1.0
    failures.note(99, b"h" * 16, outcome)
    assert lines[-1][1]["not_logged_before"] == 15
    failures.note(100, b"h" * 16, [b"not json"])  # a summary it cannot read: still a line
    assert lines[-1][1]["error"] == "?" and lines[-1][1]["function"] == ("68" * 16)


def test_an_operator_sees_failures_counted_apart_and_logged(cluster: Cluster) -> None:
    router = cluster.start_router("--log-level", "debug")
    cluster.start_workers(processes=1, concurrency=100)
    with cluster.executor() as ex:
        outcomes = [ex.submit(fail, i) for i in range(300)] + [ex.submit(abs, -1)]
        for fut in outcomes[:-1]:
            with pytest.raises(ValueError):
                fut.result(timeout=30)
        assert outcomes[-1].result(timeout=30) == 1
        stats = cluster.stats()
    assert stats["failed"] == 300 and stats["succeeded"] == 1
    assert stats["completed"] == 301
    wait_for(lambda: "task failed" in router.output(), 10, "a failure logged")
    out = router.output()
    assert "ValueError" in out and "bad input" in out
    assert out.count("task failed") < 300  # rate-limited
    assert "tasks dispatched" in out  # a debug event, with --log-level debug
