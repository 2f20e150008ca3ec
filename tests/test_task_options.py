"""Task options, one path (#13 part 4): ``ex.options(...)`` views, and timeout, retries,
retry_on and backoff holding alike for plain, ``async def``, generator and async-generator
functions, through ``submit``, ``map`` and ``stream``, on workers and inline."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import squall
from squall.client.view import ExecutorView
from squall.options import TaskOptions

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["remote", "inline"])
def ex(request: pytest.FixtureRequest) -> Iterator[squall.Executor]:
    """The same test on real workers and in inline mode: both apply options the same way."""
    if request.param == "remote":
        yield request.getfixturevalue("remote")
        return
    with squall.Executor(inline=True) as inline:
        yield inline


def attempt_number(path: str) -> int:
    """Count this call in the file at ``path``; return which call this is (1, 2, ...)."""
    counter = Path(path)
    seen = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(seen + 1))
    return seen + 1


def attempts(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


async def flaky_async(path: str, failures: int) -> int:
    await asyncio.sleep(0.01)
    attempt = attempt_number(path)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


def test_async_def_with_retries_is_retried(ex: squall.Executor, tmp_path: Path) -> None:
    retried = ex.submit(flaky_async, str(tmp_path / "a"), 2, retries=3, backoff=0.01)  # type: ignore[call-arg]
    assert retried.result(timeout=30) == 3
    assert attempts(tmp_path / "a") == 3
    view = ex.options(retries=1, backoff=0.01)
    with pytest.raises(ConnectionError, match="attempt 2 failed"):
        view.submit(flaky_async, str(tmp_path / "b"), 5).result(timeout=30)
    with pytest.raises(ConnectionError, match="attempt 1 failed"):  # not on the named errors
        view.options(retry_on=KeyError).submit(flaky_async, str(tmp_path / "c"), 5).result(
            timeout=30
        )
    assert attempts(tmp_path / "c") == 1


async def slow_first_time(path: str) -> int:
    attempt = attempt_number(path)
    await asyncio.sleep(30 if attempt == 1 else 0.01)
    return attempt


async def own_timeout_error() -> None:
    raise TimeoutError("the task's own")


def test_async_def_timeout_bounds_each_attempt(ex: squall.Executor, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(squall.TaskTimeout, match="timeout of 0.3 s"):
        ex.options(timeout=0.3).submit(slow_first_time, str(tmp_path / "a")).result(timeout=30)
    # A timed-out attempt is an error like another: retried when asked.
    view = ex.options(timeout=0.5, retries=1, backoff=0.01)
    assert view.submit(slow_first_time, str(tmp_path / "b")).result(timeout=30) == 2
    assert time.monotonic() - started < 10
    # The task's own TimeoutError is its own, not squall's.
    with pytest.raises(TimeoutError, match="the task's own") as raised:
        ex.options(timeout=5).submit(own_timeout_error).result(timeout=30)
    assert not isinstance(raised.value, squall.TaskTimeout)


def ticking(n: int, pause: float) -> Iterator[int]:
    for i in range(n):
        yield i
        time.sleep(pause)


async def async_ticking(n: int, pause: float) -> AsyncIterator[int]:
    for i in range(n):
        yield i
        await asyncio.sleep(pause)


def ticking_then_marks(directory: str, n: int, pause: float) -> Iterator[int]:
    try:
        yield from ticking(n, pause)
    finally:
        Path(directory, "finally-ran").write_text("yes")


def read_until_it_fails(stream: squall.Stream[int]) -> tuple[list[int], BaseException | None]:
    values: list[int] = []
    try:
        for value in stream:
            values.append(value)
    except Exception as exc:
        return values, exc
    return values, None


@pytest.mark.parametrize("generator", [ticking, async_ticking], ids=["sync", "async"])
def test_stream_timeout_stops_the_whole_generator_run(ex: squall.Executor, generator) -> None:
    started = time.monotonic()
    values, error = read_until_it_fails(ex.stream(generator, 200, 0.05, timeout=0.6))  # type: ignore[call-arg]
    elapsed = time.monotonic() - started
    assert isinstance(error, squall.TaskTimeout), error
    assert "timeout of 0.6 s" in str(error)
    assert 1 <= len(values) < 200 and values == list(range(len(values)))
    assert elapsed < 5, elapsed  # the whole run would take 10 s
    # the same through a view; and the slot is free again
    values, error = read_until_it_fails(ex.options(timeout=0.6).stream(generator, 200, 0.05))
    assert isinstance(error, squall.TaskTimeout) and 1 <= len(values) < 200
    assert list(ex.stream(generator, 3, 0.0, timeout=30)) == [0, 1, 2]  # type: ignore[call-arg]


def test_a_timed_out_stream_runs_its_finally(ex: squall.Executor, tmp_path: Path) -> None:
    _, error = read_until_it_fails(
        ex.options(timeout=0.5).stream(ticking_then_marks, str(tmp_path), 200, 0.05)
    )
    assert isinstance(error, squall.TaskTimeout)
    deadline = time.monotonic() + 10
    while not (tmp_path / "finally-ran").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "finally-ran").read_text() == "yes"


def fails_before_yielding(path: str, failures: int, n: int) -> Iterator[int]:
    attempt = attempt_number(path)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed before any value")
    yield from range(n)


async def async_fails_before_yielding(path: str, failures: int, n: int) -> AsyncIterator[int]:
    attempt = attempt_number(path)
    await asyncio.sleep(0)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed before any value")
    for i in range(n):
        yield i


def fails_after_yielding(path: str) -> Iterator[int]:
    attempt = attempt_number(path)
    yield attempt
    raise ConnectionError(f"attempt {attempt} failed after a value")


@pytest.mark.parametrize(
    "generator", [fails_before_yielding, async_fails_before_yielding], ids=["sync", "async"]
)
def test_a_stream_is_retried_only_before_its_first_value(
    ex: squall.Executor, tmp_path: Path, generator
) -> None:
    view = ex.options(retries=2, backoff=0.01)
    assert list(view.stream(generator, str(tmp_path / "a"), 2, 3)) == [0, 1, 2]
    assert attempts(tmp_path / "a") == 3
    with pytest.raises(ConnectionError, match="attempt 3 failed before"):
        list(view.stream(generator, str(tmp_path / "b"), 5, 3))
    # Once a value is out, a failure is the stream's end: no value is ever repeated.
    values, error = read_until_it_fails(view.stream(fails_after_yielding, str(tmp_path / "c")))
    assert values == [1] and isinstance(error, ConnectionError), error
    assert attempts(tmp_path / "c") == 1


def flaky(path: str, failures: int) -> int:
    attempt = attempt_number(path)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_map_with_task_options(ex: squall.Executor, tmp_path: Path) -> None:
    paths = [str(tmp_path / f"m{i}") for i in range(5)]
    view = ex.options(retries=2, backoff=0.01)
    assert list(view.map(flaky, paths, [2] * 5)) == [3] * 5
    assert list(view.map(flaky, paths, [0] * 5, buffersize=2)) == [4] * 5  # refills too
    chunked = [str(tmp_path / f"c{i}") for i in range(4)]
    # a task is a chunk of two calls: its first call fails once, the chunk runs again
    assert list(view.map(flaky, chunked, [1, 0, 1, 0], chunksize=2)) == [2, 1, 2, 1]
    # The option's timeout is each task's: that task's result raises TaskTimeout.
    results = ex.options(timeout=0.5).map(sleep_then_return, [0.0, 30.0, 0.0])
    assert next(results) == 0.0
    with pytest.raises(squall.TaskTimeout, match="timeout of 0.5 s"):
        next(results)
    if ex.stats().get("inline"):  # tasks run one by one at submit: no completion order
        return
    unordered = ex.options(timeout=0.5).map(sleep_then_return, [30.0, 0.1], ordered=False)
    assert next(unordered) == 0.1
    with pytest.raises(squall.TaskTimeout):
        next(unordered)


def test_maps_own_timeout_is_still_the_whole_maps_deadline(remote: squall.Executor) -> None:
    started = time.monotonic()
    results = remote.options(timeout=30).map(sleep_then_return, [0.0, 10.0], timeout=1.0)
    assert next(results) == 0.0
    with pytest.raises(concurrent.futures.TimeoutError) as raised:
        next(results)
    assert not isinstance(raised.value, squall.TaskTimeout)
    assert time.monotonic() - started < 5


async def async_options_echo(x: int, *, timeout: float, retries: int) -> tuple[Any, ...]:
    return x, timeout, retries


def options_echo(x: int, *, timeout: float, retries: int, retry_on: Any, backoff: Any) -> tuple:
    return x, timeout, retries, retry_on, backoff


def options_echo_stream(timeout: float, retries: int) -> Iterator[Any]:
    yield timeout
    yield retries


def test_a_view_passes_every_keyword_to_the_function(ex: squall.Executor) -> None:
    view = ex.options()
    call = view.submit(options_echo, 1, timeout=5, retries="many", retry_on=None, backoff=-1)
    assert call.result(timeout=30) == (1, 5, "many", None, -1)
    with_options = ex.options(timeout=10, retries=1)
    assert with_options.submit(async_options_echo, 2, timeout=-3, retries=7).result(timeout=30) == (
        2,
        -3,
        7,
    )
    assert list(view.stream(options_echo_stream, timeout=0, retries=-1)) == [0, -1]
    assert list(with_options.map(options_echo_stream, [1], [2])) == [[1, 2]]
    # the reserved keywords keep working on the executor itself
    with pytest.raises(squall.TaskTimeout):
        ex.submit(sleep_then_return, 30, timeout=0.3).result(timeout=30)  # type: ignore[call-arg]


def slow_generator_for_submit(n: int, pause: float) -> Iterator[int]:
    yield from ticking(n, pause)


def fails_mid_drain(path: str) -> Iterator[int]:
    attempt = attempt_number(path)
    yield attempt
    if attempt == 1:
        raise ConnectionError("failed while drained")
    yield attempt


def test_generator_submits_are_timed_and_retried_whole(ex: squall.Executor, tmp_path) -> None:
    started = time.monotonic()
    with pytest.raises(squall.TaskTimeout):
        ex.options(timeout=0.5).submit(slow_generator_for_submit, 200, 0.05).result(timeout=30)
    with pytest.raises(squall.TaskTimeout):
        ex.options(timeout=0.5).submit(async_ticking, 200, 0.05).result(timeout=30)
    assert time.monotonic() - started < 8
    # submit's result is one list: a failed drain is run again from the start
    view = ex.options(retries=1, backoff=0.01)
    assert view.submit(fails_mid_drain, str(tmp_path / "d")).result(timeout=30) == [2, 2]


def test_options_views_chain_and_merge() -> None:
    with squall.Executor(inline=True) as ex:
        view = ex.options(timeout=1).options(retries=2).options(retry_on=KeyError)
        assert isinstance(view, ExecutorView) and view.executor is ex
        assert view.task_options == TaskOptions(
            timeout=1, retries=2, retry_on=(KeyError,), backoff=0.1
        )
        assert view.options(timeout=None).task_options.timeout is None  # lifted
        assert view.options(backoff=0).task_options.retries == 2  # the rest kept
        assert "timeout=1" in repr(view) and "retries=2" in repr(view)
        assert ex.options().task_options == TaskOptions()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"timeout": -1}, ValueError, "timeout must be positive"),
        ({"timeout": 0}, ValueError, "timeout must be positive"),
        ({"timeout": "5"}, TypeError, "timeout must be a number"),
        ({"timeout": float("nan")}, TypeError, "timeout must be a number"),
        ({"retries": 1.5}, TypeError, "retries must be an int"),
        ({"retries": True}, TypeError, "retries must be an int"),
        ({"retries": -1}, ValueError, "retries must be 0 or more"),
        ({"retry_on": ValueError("x")}, TypeError, "retry_on must be an Exception subclass"),
        ({"retry_on": (KeyError, 3)}, TypeError, "retry_on must be an Exception subclass"),
        ({"retry_on": KeyboardInterrupt}, TypeError, "retry_on must be an Exception subclass"),
        ({"backoff": -0.1}, ValueError, "backoff must be 0 or more"),
        ({"backoff": None}, TypeError, "backoff must be a number"),
    ],
)
def test_bad_options_fail_at_the_call_in_one_line(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with squall.Executor(inline=True) as ex:
        with pytest.raises(error, match=message) as raised:
            ex.options(**options)
        assert "\n" not in str(raised.value)
        with pytest.raises(error, match=message):
            ex.options(timeout=1).options(**options)
        with pytest.raises(error, match=message):  # the reserved keywords are checked alike
            ex.submit(abs, -1, **options)
        assert ex.stats()["submitted"] == 0


def test_bad_options_fail_at_submit_on_a_real_executor(remote: squall.Executor) -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        remote.submit(abs, -1, timeout=-1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="retries must be an int"):
        remote.stream(ticking, 3, 0.0, retries="3")  # type: ignore[call-arg]
    assert remote.options(timeout=5).submit(abs, -1).result(timeout=30) == 1


async def async_spin(seconds: float) -> int:
    """An ``async def`` that never awaits: it blocks the worker's asyncio loop, and the hub."""
    end = time.monotonic() + seconds
    laps = 0
    while time.monotonic() < end:
        laps += 1
    return laps


def test_an_async_def_blocking_past_its_timeout_is_stopped(cluster) -> None:
    """Its deadline reaches the watchdog like a plain task's: past it (+1 s) the process is
    restarted and that task alone fails with TaskTimeout (no --block-limit here)."""
    cluster.start_router()
    cluster.start_workers(1, 20, "--block-limit", "0")
    with cluster.executor() as ex:
        started = time.monotonic()
        with pytest.raises(squall.TaskTimeout, match="blocked its worker past its timeout"):
            ex.options(timeout=1.0).submit(async_spin, 300.0).result(timeout=60)
        assert time.monotonic() - started < 30
        assert ex.submit(abs, -3).result(timeout=30) == 3
        stats = cluster.stats()
    assert stats["timed_out"] == 1 and stats["worker_deaths"] == 0


def test_async_executor_options_apply_to_submit_map_and_stream(cluster, tmp_path: Path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=50)

    async def main() -> None:
        async with squall.AsyncExecutor(cluster.address) as ex:
            view = ex.options(retries=2, backoff=0.01)
            assert await view.submit(flaky_async, str(tmp_path / "a"), 2) == 3
            mapped = view.map(flaky, [str(tmp_path / f"m{i}") for i in range(3)], [1, 1, 1])
            assert [x async for x in mapped] == [2, 2, 2]
            with pytest.raises(squall.TaskTimeout):
                await ex.options(timeout=0.3).submit(slow_first_time, str(tmp_path / "t"))
            values: list[int] = []
            with pytest.raises(squall.TaskTimeout):
                async for value in ex.options(timeout=0.5).stream(ticking, 100, 0.1):
                    values.append(value)
            assert 0 < len(values) < 100
            # The view passes the function's own keywords through untouched.
            echoed = await ex.options().submit(async_options_echo, 1, timeout=7, retries=8)
            assert echoed[1:] == (7, 8)
            with pytest.raises(ValueError, match="timeout"):
                ex.options(timeout=-1)

    asyncio.run(main())
