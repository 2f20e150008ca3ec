"""Outcomes are unpickled in the caller's thread, when it asks, never in the client's I/O thread.

Issue 10, item 6: a worker key can answer any task it receives with a pickle of its choosing.
Unpickled as it arrives, an error outcome ran the worker's code in every client at once, in the
I/O thread, whether or not anyone looked at it. These tests answer tasks from a hostile worker
(pyzmq and ``squall.protocol`` only, through a real router) with pickles that record the thread
they are loaded in, and check that nothing runs until the caller asks, and then in its thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import squall
from conftest import Cluster, router_stats, wait_for
from squall import protocol
from squall.errors import RemoteTraceback, SerializationError
from squall.protocol import MsgType, Role, Status, StreamItem, TaskItem

pytestmark = pytest.mark.timeout(60)

#: Long enough for the I/O thread to have unpickled anything it was going to.
SETTLE = 0.5


class Planted:
    """Unpickles by running code that appends the loading thread's name to ``marker``.

    What a hostile worker would send: ``eval`` of any source, with nothing but builtins. The
    source then evaluates to ``value`` (an exception for an error outcome).
    """

    def __init__(self, marker: Path, value: str) -> None:
        self.marker = marker
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        record = (
            "(lambda os: (lambda fd: (os.write(fd, "
            "(__import__('threading').current_thread().name + '\\n').encode()), os.close(fd)))"
            f"(os.open({str(self.marker)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)))"
            "(__import__('os'))"
        )
        return eval, (f"({record}, {self.value})[1]", {})


def planted_pickle(marker: Path, value: str) -> bytes:
    return pickle.dumps(Planted(marker, value), protocol=5)


def planted_error(marker: Path) -> list[Any]:
    """An error outcome as a worker's ``serialization.dumps_exception`` lays it out: the JSON
    summary, then the pickled exception (here, one that runs code as it loads)."""
    pickled = planted_pickle(marker, "ValueError('planted')")
    return protocol.error_outcome("ValueError", "planted", "remote traceback text", [pickled])


def loaded_in(marker: Path) -> list[str]:
    """The names of the threads that unpickled ``marker``'s payload, once per load."""
    return marker.read_text().splitlines() if marker.exists() else []


class FakeWorker:
    """A worker made of a DEALER socket: answers each task with the messages ``answer`` makes.

    It says HELLO with a routing id of its own and heartbeats, as a real worker does, so the
    router gives it tasks; it never looks at what the tasks are.
    """

    def __init__(self, address: str, answer: Callable[[TaskItem], list[list[Any]]]) -> None:
        self._answer = answer
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTING_ID, b"w" + os.urandom(15))
        self._socket.connect(address)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._socket.send_multipart(protocol.encode_hello(Role.WORKER, os.getpid(), 16))
        next_beat = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_beat:  # the router's liveness is 1 s in the tests
                self._socket.send_multipart(protocol.encode_heartbeat())
                next_beat = time.monotonic() + 0.2
            if not self._socket.poll(50):
                continue
            frames = self._socket.recv_multipart()
            type_, body = protocol.parse_header(frames)
            if type_ is MsgType.TASK:
                for task in protocol.decode_task(body, frames[1:]):
                    for message in self._answer(task):
                        self._socket.send_multipart(message)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()
        self._context.term()


def start_router(cluster: Cluster) -> str:
    """A real router on an ipc socket in the test's private directory."""
    cluster.address = f"ipc://{cluster.tmp_path}/r"
    cluster.router = cluster.start("router", "--bind", cluster.address)
    wait_for(
        lambda: router_stats(cluster.address, timeout=0.5) is not None, 15, "router did not answer"
    )
    return cluster.address


@pytest.fixture
def hostile(cluster: Cluster) -> Iterator[Callable[[Callable[[TaskItem], list[list[Any]]]], None]]:
    """Start a router and a fake worker answering with the given function."""
    workers: list[FakeWorker] = []

    def start(answer: Callable[[TaskItem], list[list[Any]]]) -> None:
        workers.append(FakeWorker(start_router(cluster), answer))
        wait_for(lambda: cluster.stats()["workers"] >= 1, 15, "fake worker did not register")

    yield start
    for worker in workers:
        worker.close()


def never_runs(n: int) -> Iterator[int]:
    """Submitted to the fake worker, which never runs anything."""
    yield from range(n)


def answer_with_error(frames: list[Any]) -> Callable[[TaskItem], list[list[Any]]]:
    return lambda task: [protocol.encode_result([(task.task_id, Status.ERROR, frames)])]


def test_error_outcome_is_unpickled_only_by_exception_in_the_callers_thread(
    cluster: Cluster, hostile: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "error-loaded"
    hostile(answer_with_error(planted_error(marker)))
    with cluster.executor() as ex:
        future = ex.submit(abs, -1)
        done, _ = concurrent.futures.wait([future], timeout=15)
        assert future in done and future.done()
        time.sleep(SETTLE)
        assert "finished" in repr(future)
        assert loaded_in(marker) == [], "the I/O thread unpickled the error outcome"

        error = future.exception()
        assert loaded_in(marker) == [threading.current_thread().name]
        assert type(error) is ValueError and str(error) == "planted"
        assert isinstance(error.__cause__, RemoteTraceback)
        assert error.__cause__.tb == "remote traceback text"
        with pytest.raises(ValueError, match="planted") as raised:
            future.result()
        assert raised.value is error
        assert future.exception() is error
        assert loaded_in(marker) == [threading.current_thread().name], "decoded more than once"


def test_error_outcome_is_unpickled_by_result_in_whichever_thread_asks(
    cluster: Cluster, hostile: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "error-loaded"
    hostile(answer_with_error(planted_error(marker)))
    with cluster.executor() as ex:
        futures = [ex.submit(abs, -i) for i in range(3)]
        assert len(list(concurrent.futures.as_completed(futures, timeout=15))) == 3
        time.sleep(SETTLE)
        assert loaded_in(marker) == []

        raised: list[BaseException] = []

        def ask() -> None:
            try:
                futures[0].result()
            except BaseException as exc:
                raised.append(exc)

        asker = threading.Thread(target=ask, name="the-asker")
        asker.start()
        asker.join(15)
        assert loaded_in(marker) == ["the-asker"], "only the future asked for is unpickled"
        assert [type(e) for e in raised] == [ValueError]
        assert futures[0].exception() is raised[0]


def test_unreadable_outcomes_fail_as_serialization_error_when_asked(
    cluster: Cluster, hostile: Any, tmp_path: Path
) -> None:
    bad_error = (Status.ERROR, [b"{not json", b""])
    bad_result = (Status.OK, [b"not a pickle"])
    outcomes = iter([bad_error, bad_result, bad_result])

    def answer(task: TaskItem) -> list[list[Any]]:
        status, frames = next(outcomes)
        return [protocol.encode_result([(task.task_id, status, frames)])]

    hostile(answer)
    with cluster.executor() as ex:
        future = ex.submit(abs, -1)
        assert future in concurrent.futures.wait([future], timeout=15).done
        assert isinstance(future.exception(), SerializationError)
        with pytest.raises(SerializationError, match="error could not be read"):
            future.result()

        # exception() agrees with result() about a result that will not unpickle, so that
        # asyncio.wrap_future (exception() first, then result()) fails instead of hanging.
        unpicklable = ex.submit(abs, -2)
        first = concurrent.futures.wait([unpicklable], 15, concurrent.futures.FIRST_EXCEPTION)
        assert unpicklable in first.done
        assert isinstance(unpicklable.exception(), SerializationError)
        with pytest.raises(SerializationError, match="result could not be unpickled"):
            unpicklable.result()

        async def main() -> None:
            with pytest.raises(SerializationError):
                await asyncio.wait_for(asyncio.wrap_future(ex.submit(abs, -3)), 15)

        asyncio.run(main())


def test_stream_values_and_error_are_unpickled_by_the_reader_as_it_iterates(
    cluster: Cluster, hostile: Any, tmp_path: Path
) -> None:
    loose, packed, failed = tmp_path / "loose", tmp_path / "packed", tmp_path / "failed"

    def answer(task: TaskItem) -> list[list[Any]]:
        one = StreamItem(task.task_id, 1, False, [planted_pickle(loose, "'loose'")])
        many = protocol.pack_values([planted_pickle(packed, "'packed'")] * 2)
        two = StreamItem(task.task_id, 2, True, [many])
        return [
            protocol.encode_items([one, two]),
            protocol.encode_result([(task.task_id, Status.ERROR, planted_error(failed))]),
        ]

    hostile(answer)
    me = threading.current_thread().name
    with cluster.executor() as ex:
        stream = ex.stream(never_runs, 3)
        wait_for(lambda: "done" in repr(stream) and stream.received == 3, 15, "stream outcome")
        time.sleep(SETTLE)
        assert (loaded_in(loose), loaded_in(packed), loaded_in(failed)) == ([], [], [])

        assert next(stream) == "loose"
        assert (loaded_in(loose), loaded_in(packed), loaded_in(failed)) == ([me], [], [])
        assert next(stream) == "packed"
        assert (loaded_in(packed), loaded_in(failed)) == ([me], [])
        assert next(stream) == "packed"
        assert (loaded_in(packed), loaded_in(failed)) == ([me, me], [])
        with pytest.raises(ValueError, match="planted") as raised:
            next(stream)
        assert loaded_in(failed) == [me]
        assert isinstance(raised.value.__cause__, RemoteTraceback)
        with pytest.raises(StopIteration):
            next(stream)


def fail_later(delay: float, message: str) -> None:
    time.sleep(delay)
    raise ValueError(message)


def stop_iteration() -> None:
    raise StopIteration("remote")


def test_callbacks_waiters_and_asyncio_see_the_decoded_remote_exception(
    cluster: Cluster,
) -> None:
    start_router(cluster)
    cluster.start_workers(processes=1, concurrency=10)
    with cluster.executor() as ex:
        future = ex.submit(fail_later, 0.5, "late")
        seen: list[BaseException | None] = []
        future.add_done_callback(lambda f: seen.append(f.exception()))
        assert list(squall.as_completed([future], timeout=15)) == [future]
        error = future.exception()
        assert seen == [error]
        assert type(error) is ValueError and str(error) == "late"
        assert isinstance(error.__cause__, RemoteTraceback)
        assert "fail_later" in error.__cause__.tb
        assert "raised ValueError" in repr(future)
        after: list[BaseException | None] = []
        future.add_done_callback(lambda f: after.append(f.exception()))
        assert after == [error]

        async def main() -> tuple[BaseException, BaseException, Any, Any]:
            awaited = ex.submit(fail_later, 0.3, "awaited")
            with pytest.raises(ValueError, match="awaited") as first:
                await awaited
            wrapped = ex.submit(fail_later, 0.3, "wrapped")
            with pytest.raises(ValueError, match="wrapped") as second:
                await asyncio.wrap_future(wrapped)
            # asyncio refuses StopIteration as an outcome: it arrives wrapped, and the futures
            # handed to the loop with it still resolve.
            stopped, alongside = ex.submit(stop_iteration), ex.submit(abs, -5)
            with pytest.raises(RuntimeError, match="StopIteration"):
                await asyncio.wait_for(stopped, 15)
            assert await asyncio.wait_for(alongside, 15) == 5
            return first.value, second.value, awaited, wrapped

        first, second, awaited, wrapped = asyncio.run(main())
        assert first is awaited.exception() and second is wrapped.exception()
        assert isinstance(first.__cause__, RemoteTraceback)
        assert isinstance(second.__cause__, RemoteTraceback)
