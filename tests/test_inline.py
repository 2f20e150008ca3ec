"""Inline mode (#12 item 14): the project's own API tests, run in-process, plus what only
inline mode gives: mock.patch reaching the task, nothing started, instant start and stop."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import pytest

import squall
import test_dependencies as deps
import test_end_to_end as e2e
import test_reliability as reliability
import test_streaming as streaming

pytestmark = pytest.mark.timeout(60)

#: API tests written for real processes that hold in-process too (not those that measure
#: concurrency: inline tasks run one after another, at submit)
SHARED: list[Callable[..., None]] = [
    e2e.test_every_kind_of_callable,
    e2e.test_remote_exception_keeps_type_message_and_traceback,
    e2e.test_exception_that_cannot_travel_becomes_task_failed,
    e2e.test_unpicklable_argument_fails_at_submit_naming_it,
    e2e.test_unpicklable_result_fails_the_task_and_the_worker_lives,
    e2e.test_large_numpy_array_round_trips_out_of_band,
    e2e.test_many_threads_submit_at_once,
    e2e.test_futures_work_with_wait_and_as_completed,
    e2e.test_map_keeps_order_and_supports_chunks,
    deps.test_chain_of_three,
    deps.test_fan_out_then_fan_in,
    deps.test_a_failed_dependency_fails_the_dependent_naming_it,
    deps.test_more_dependencies_than_the_wire_counts_fail_at_submit,
    reliability.test_retries_only_when_asked_and_only_on_the_named_errors,
    streaming.test_first_item_arrives_while_the_generator_still_runs,
    streaming.test_exception_is_raised_where_it_happened,
    streaming.test_async_generators_stream_too,
    streaming.test_submit_of_a_generator_function_collects_a_list,
    streaming.test_many_streams_at_once_from_threads,
    streaming.test_stream_of_a_non_iterable_fails_clearly,
]


@pytest.fixture
def inline() -> Iterator[squall.Executor]:
    with squall.Executor(inline=True) as ex:
        yield ex


@pytest.mark.parametrize("case", SHARED, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_api_tests_pass_inline(case: Callable[..., None], inline, tmp_path: Path) -> None:
    wanted = inspect.signature(case).parameters
    given = {"remote": inline, "tmp_path": tmp_path}
    case(**{name: value for name, value in given.items() if name in wanted})


def helper(x: int) -> int:
    return x + 1


def calls_helper(x: int) -> int:
    return helper(x) * 10


def test_mock_patch_reaches_the_task(inline) -> None:
    with mock.patch(f"{__name__}.helper", return_value=100) as patched:
        assert inline.submit(calls_helper, 1).result() == 1000
    patched.assert_called_once_with(1)
    assert inline.submit(calls_helper, 1).result() == 20  # unpatched again


def test_unpicklable_argument_fails_at_submit(inline) -> None:
    with pytest.raises(squall.SerializationError, match=r"argument 1 of type lock"):
        inline.submit(e2e.module_level_add, 1, threading.Lock())
    with pytest.raises(squall.SerializationError, match="keyword argument 'b'"):
        inline.stream(streaming.tiny_items, 3, b=threading.Lock())
    assert inline.stats()["submitted"] == 0


def test_arguments_and_results_are_copies(inline) -> None:
    data = [1, 2]
    back = inline.submit(lambda d: d.append(3) or d, data).result()
    assert data == [1, 2] and back == [1, 2, 3]


def test_runs_here_at_submit_with_nothing_started() -> None:
    before = psutil.Process().children(recursive=True)
    threads = threading.active_count()
    started = time.perf_counter()
    ex = squall.Executor(inline=True, processes=4)
    future = ex.submit(os.getpid)
    assert future.done() and future.result() == os.getpid()
    ex.shutdown()
    assert time.perf_counter() - started < 0.5
    assert psutil.Process().children(recursive=True) == before
    assert threading.active_count() == threads
    with pytest.raises(squall.ExecutorShutdown):
        ex.submit(os.getpid)


def test_squall_inline_environment_variable(monkeypatch) -> None:
    monkeypatch.setenv("SQUALL_INLINE", "1")
    with squall.Executor() as ex:
        assert ex.stats()["inline"] is True
        assert ex.submit(os.getpid).result() == os.getpid()
    with squall.Executor(inline=False, processes=1) as ex:  # asked explicitly: a real one
        assert ex.submit(os.getpid).result(timeout=30) != os.getpid()


def test_timeout_retries_and_cancel(inline) -> None:
    with pytest.raises(squall.TaskTimeout):
        inline.submit(time.sleep, 5, timeout=0.2).result()
    future = inline.submit(e2e.module_level_add, 1, 2)
    assert future.cancel() is False and inline.cancel(future, interrupt=True) is False
    assert future.result() == 3


async def double_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


def test_async_def_tasks_and_as_completed(inline) -> None:
    assert inline.submit(double_later, 4).result() == 8
    with pytest.raises(squall.TaskTimeout):
        inline.submit(asyncio.sleep, 5, timeout=0.1).result()

    async def from_a_loop() -> list[Any]:
        futures = [inline.submit(double_later, i) for i in range(3)]  # loop busy: a thread runs it
        got = [await f for f in futures]
        got += [f.result() async for f in squall.as_completed(futures, timeout=5)]
        got += [v async for v in inline.stream(streaming.async_counter, 3)]
        return got

    assert asyncio.run(from_a_loop())[:3] == [0, 2, 4]


def test_map_options_inline(inline) -> None:
    assert sorted(inline.map(abs, range(-5, 0), ordered=False)) == [1, 2, 3, 4, 5]
    assert list(inline.map(abs, range(-6, 0), chunksize=4, buffersize=1)) == [6, 5, 4, 3, 2, 1]
    endless = inline.map(abs, iter(int, 1), buffersize=2)  # an endless iterable
    assert [next(endless) for _ in range(3)] == [0, 0, 0]
    assert list(inline.map(abs, [-1], timeout=5, progress=True)) == [1]


def test_breaking_out_of_a_stream_runs_its_finally(inline, tmp_path: Path) -> None:
    for value in inline.stream(streaming.marks_finally, str(tmp_path), 100):
        if value == 2:
            break
    assert (tmp_path / "finally-ran").read_text() == str(os.getpid())
