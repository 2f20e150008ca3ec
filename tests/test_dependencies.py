"""Futures as arguments: chains, fan-out/fan-in, failures, values resolved in the router."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import squall

pytestmark = pytest.mark.timeout(90)


def add(a: int, b: int) -> int:
    return a + b


def slow_add(a: int, b: int, pause: float = 0.2) -> int:
    time.sleep(pause)
    return a + b


def total(values: list[int], extra: dict[str, int]) -> int:
    return sum(values) + sum(extra.values())


def boom(message: str) -> int:
    raise ValueError(message)


def test_chain_of_three(remote: squall.Executor) -> None:
    a = remote.submit(slow_add, 1, 2)
    b = remote.submit(slow_add, a, 10)
    c = remote.submit(add, b, b)  # the same future twice
    assert c.result(timeout=30) == 26
    assert (a.result(), b.result()) == (3, 13)


def test_fan_out_then_fan_in(remote: squall.Executor) -> None:
    parts = [remote.submit(slow_add, i, 0, 0.05) for i in range(100)]
    summed = remote.submit(total, parts, {"x": parts[0], "y": 1000})
    assert summed.result(timeout=30) == sum(range(100)) + 0 + 1000


def test_a_failed_dependency_fails_the_dependent_naming_it(remote: squall.Executor) -> None:
    bad = remote.submit(boom, "no good")
    dependent = remote.submit(add, bad, 1)
    with pytest.raises(squall.DependencyFailed, match=rf"task {bad.task_id} failed") as info:
        dependent.result(timeout=30)
    assert isinstance(info.value.__cause__, ValueError)
    assert "no good" in str(info.value)
    # Already failed here before submitting: fails at once, same error.
    with pytest.raises(squall.DependencyFailed, match="ValueError: no good"):
        remote.submit(add, bad, 1).result(timeout=5)


def test_a_cancelled_dependency_fails_the_dependent(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=1)
    with cluster.executor() as ex:
        blocker = ex.submit(time.sleep, 1.0)  # holds the only slot
        queued = ex.submit(add, 1, 1)
        dependent = ex.submit(add, queued, 1)
        assert queued.cancel()
        with pytest.raises(squall.DependencyFailed, match="cancelled"):
            dependent.result(timeout=30)
        blocker.result(timeout=30)


def _leave_marker(directory: str) -> Marker:
    Path(directory, str(os.getpid())).touch()
    return Marker(directory)


class Marker:
    """Unpickling one leaves a file named after the process that did it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __reduce__(self) -> tuple[object, ...]:
        return _leave_marker, (self.directory,)


def make_marker(directory: str) -> Marker:
    time.sleep(0.3)  # still running when the dependent is submitted
    return Marker(directory)


def unwrap(marker: Marker) -> str:
    return f"got it in {os.getpid()}"


def test_dependency_values_do_not_pass_through_the_client(
    remote: squall.Executor, cluster, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "markers"
    tmp_path.mkdir()
    first = remote.submit(make_marker, str(tmp_path))
    second = remote.submit(unwrap, first)
    assert second.result(timeout=30).startswith("got it in")
    unpicklers = {int(p.name) for p in tmp_path.iterdir()}
    assert os.getpid() not in unpicklers  # the client never unpickled the intermediate value
    assert unpicklers & set(cluster.stats()["worker_pids"])
    first.result()  # ...until asked for it
    assert os.getpid() in {int(p.name) for p in tmp_path.iterdir()}


def test_future_of_another_executor_is_refused(remote: squall.Executor, cluster) -> None:
    with cluster.executor() as other:
        foreign = other.submit(add, 1, 1)
        with pytest.raises(ValueError, match="another executor"):
            remote.submit(add, foreign, 1)
        foreign.result(timeout=30)


def test_more_dependencies_than_the_wire_counts_fail_at_submit(remote: squall.Executor) -> None:
    # The wire counts a task's dependencies in 16 bits: refuse clearly, before anything is sent
    # (an encoding error later would take the client's I/O thread down).
    pending = [remote._new_future() for _ in range(65_536)]
    with pytest.raises(ValueError, match="at most 65,535 futures"):
        remote.submit(max, pending)
    assert remote.submit(add, 1, 2).result(timeout=30) == 3
