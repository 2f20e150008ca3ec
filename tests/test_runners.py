"""A worker process runs tasks in reused greenlets ("runners", #14): each task still starts in a
fresh context, and interrupting a task never reaches the next task its runner took on."""

from __future__ import annotations

import concurrent.futures
import random
import time

import pytest

pytestmark = pytest.mark.timeout(120)


def read_then_set(i: int) -> str:
    """What a context variable holds when the task starts; then set it for whoever is next."""
    import contextvars
    import sys
    import types

    holder = sys.modules.setdefault("squall_test_holder", types.ModuleType("squall_test_holder"))
    if not hasattr(holder, "var"):
        holder.var = contextvars.ContextVar("squall_test_var", default="fresh")  # type: ignore[attr-defined]
    seen: str = holder.var.get()  # type: ignore[attr-defined]
    holder.var.set(f"set by task {i}")  # type: ignore[attr-defined]
    return seen


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_context_variable_set_by_one_task_is_not_seen_by_the_next(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=100)
    with cluster.executor() as ex:
        # One at a time: each task runs in the runner the one before it left.
        seen = [ex.submit(read_then_set, i).result(timeout=30) for i in range(200)]
        seen += list(ex.map(read_then_set, range(2_000)))
    assert set(seen) == {"fresh"}


def test_interrupting_tasks_as_they_end_never_cancels_the_tasks_after_them(cluster) -> None:
    """CANCELs that arrive just as their task ends find its runner on another task: that task
    must run on untouched."""
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=50)
    rng = random.Random(14)
    with cluster.executor() as ex:
        for _ in range(5):
            doomed = [ex.submit(nap, rng.uniform(0, 0.02)) for _ in range(100)]
            bystanders = [ex.submit(nap, 0.03) for _ in range(100)]
            for future in doomed:
                time.sleep(rng.uniform(0, 0.0005))
                ex.cancel(future, interrupt=True)
            assert [f.result(timeout=30) for f in bystanders] == [0.03] * 100
            for future in doomed:  # each one either ran or was cancelled, nothing else
                try:
                    assert future.result(timeout=30) >= 0
                except concurrent.futures.CancelledError:
                    pass
        long = ex.submit(nap, 30)
        time.sleep(0.3)
        assert ex.cancel(long, interrupt=True)
        with pytest.raises(concurrent.futures.CancelledError):
            long.result(timeout=10)
        assert list(ex.map(nap, [0.0] * 500)) == [0.0] * 500
