"""The core path on real processes: callables of every kind, errors, big buffers, threads."""

from __future__ import annotations

import concurrent.futures
import functools
import os
import socket
import threading
import time

import numpy as np
import pytest

import squall

pytestmark = pytest.mark.timeout(90)


def module_level_add(a: int, b: int = 0) -> int:
    return a + b


class Account:
    def __init__(self, balance: int) -> None:
        self.balance = balance

    def deposit(self, amount: int) -> int:
        return self.balance + amount


class CustomError(Exception):
    pass


def raise_custom(message: str) -> None:
    raise CustomError(message)


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickles, but fails to unpickle
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


def test_every_kind_of_callable(remote: squall.Executor) -> None:
    base = 100

    def closure(x: int) -> int:
        return x + base

    def outer() -> object:
        def nested(x: int) -> int:
            return x * 3

        return nested

    cases = [
        (lambda x: x * 2, (21,), {}, 42),
        (closure, (1,), {}, 101),
        (outer(), (5,), {}, 15),
        (module_level_add, (1,), {"b": 2}, 3),
        (len, ("abcd",), {}, 4),
        (Account(10).deposit, (5,), {}, 15),
        (functools.partial(module_level_add, 40), (2,), {}, 42),
        (sorted, ([3, 1, 2],), {"reverse": True}, [3, 2, 1]),
    ]
    futures = [remote.submit(fn, *args, **kwargs) for fn, args, kwargs, _ in cases]
    assert [f.result(timeout=30) for f in futures] == [expected for *_, expected in cases]


def test_tasks_run_in_worker_processes(remote: squall.Executor, cluster) -> None:
    pids = set(remote.map(lambda _: os.getpid(), range(200)))
    assert pids <= set(cluster.stats()["worker_pids"])
    assert os.getpid() not in pids


def test_function_body_travels_once(remote: squall.Executor, cluster) -> None:
    factor = 7

    def scale(x: int) -> int:
        return x * factor

    before = cluster.stats()
    futures = [remote.submit(scale, i) for i in range(1000)]
    assert [f.result(timeout=30) for f in futures] == [i * 7 for i in range(1000)]
    after = cluster.stats()
    # From the client: one upload. From the router: at most one per worker process.
    assert remote.stats()["client_bodies_sent"] == 1
    assert after["bodies_received"] - before.get("bodies_received", 0) == 1
    assert after["bodies_sent"] - before.get("bodies_sent", 0) <= after["workers"]


def test_remote_exception_keeps_type_message_and_traceback(remote: squall.Executor) -> None:
    with pytest.raises(CustomError, match="boom") as info:
        remote.submit(raise_custom, "boom").result(timeout=30)
    remote_tb = info.value.__cause__
    assert isinstance(remote_tb, squall.RemoteTraceback)
    assert "raise_custom" in str(remote_tb) and "CustomError: boom" in str(remote_tb)

    with pytest.raises(ZeroDivisionError):
        remote.submit(lambda: 1 / 0).result(timeout=30)


def test_exception_that_cannot_travel_becomes_task_failed(remote: squall.Executor) -> None:
    with pytest.raises(squall.TaskFailed) as info:
        remote.submit(raise_unpicklable).result(timeout=30)
    assert "Unpicklable" in info.value.type_name
    assert info.value.remote_message == "1/2"
    assert "raise_unpicklable" in info.value.remote_traceback


def test_unpicklable_argument_fails_at_submit_naming_it(remote: squall.Executor) -> None:
    lock = threading.Lock()
    with pytest.raises(squall.SerializationError, match=r"argument 1 of type lock"):
        remote.submit(module_level_add, 1, lock)
    with pytest.raises(squall.SerializationError, match=r"keyword argument 'b' of type socket"):
        with socket.socket() as sock:
            remote.submit(module_level_add, 1, b=sock)
    assert remote.stats()["submitted"] == 0  # nothing was sent
    assert remote.submit(module_level_add, 1, 2).result(timeout=30) == 3


def test_unpicklable_result_fails_the_task_and_the_worker_lives(remote: squall.Executor) -> None:
    with pytest.raises(squall.SerializationError, match=r"result of type \w*[Ll]ock\w* cannot be"):
        remote.submit(threading.Lock).result(timeout=30)
    assert remote.submit(module_level_add, 2, 3).result(timeout=30) == 5


def test_large_numpy_array_round_trips_out_of_band(remote: squall.Executor) -> None:
    array = np.random.default_rng(0).random(50 * 1024 * 1024 // 8)  # 50 MB

    def inspect(a: np.ndarray) -> tuple[np.ndarray, bool]:
        # The pickle itself stayed small: the array data came as a frame of its own.
        return a * 2, a.flags.writeable

    result, writeable = remote.submit(inspect, array).result(timeout=60)
    assert writeable
    np.testing.assert_array_equal(result, array * 2)
    assert result.flags.writeable


def test_big_buffers_are_out_of_band_frames() -> None:
    from squall import serialization

    array = np.zeros(1_000_000)
    frames = serialization.dumps(((array, b"x" * 100_000, bytearray(70_000)), {}))
    assert len(frames) == 4  # the pickle + three out-of-band buffers
    assert len(frames[0]) < 1000
    args, _ = serialization.loads(frames)
    np.testing.assert_array_equal(args[0], array)
    assert args[1] == b"x" * 100_000 and args[2] == bytearray(70_000)


def test_many_threads_submit_at_once(remote: squall.Executor) -> None:
    def caller(thread: int) -> list[tuple[int, int]]:
        futures = [remote.submit(module_level_add, thread * 1000, i) for i in range(300)]
        return [(thread * 1000 + i, f.result(timeout=60)) for i, f in enumerate(futures)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for pairs in pool.map(caller, range(8)):
            assert all(expected == got for expected, got in pairs)


def test_futures_work_with_wait_and_as_completed(remote: squall.Executor) -> None:
    futures = [remote.submit(time.sleep, 0.01 * (i % 5)) for i in range(50)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    done = list(concurrent.futures.as_completed(futures, timeout=30))
    assert len(done) == 50
    finished, not_done = concurrent.futures.wait(futures, timeout=30)
    assert len(finished) == 50 and not not_done


def test_map_keeps_order_and_supports_chunks(remote: squall.Executor) -> None:
    assert list(remote.map(module_level_add, range(500), range(500))) == [2 * i for i in range(500)]
    assert list(remote.map(module_level_add, range(100), chunksize=7)) == list(range(100))


def test_map_timeout(remote: squall.Executor) -> None:
    results = remote.map(time.sleep, [5], timeout=0.3)
    with pytest.raises(TimeoutError):
        list(results)


def test_dead_worker_process_is_restarted(remote: squall.Executor, cluster) -> None:
    import psutil

    pids = cluster.stats()["worker_pids"]
    victim = pids[0]
    psutil.Process(victim).kill()

    def replaced() -> bool:
        now = cluster.stats()["worker_pids"]
        return victim not in now and len(now) == len(pids)

    deadline = time.monotonic() + 15
    while not replaced():
        assert time.monotonic() < deadline, "worker process not restarted"
        time.sleep(0.1)
    assert list(remote.map(module_level_add, range(100))) == list(range(100))


def test_submit_after_shutdown_raises(cluster) -> None:
    cluster.start_router()
    ex = cluster.executor()
    ex.shutdown()
    with pytest.raises(squall.ExecutorShutdown):
        ex.submit(len, "x")
    with pytest.raises(RuntimeError):  # as concurrent.futures executors do
        ex.submit(len, "x")
