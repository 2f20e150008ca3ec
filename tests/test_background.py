"""Background tasks on real processes: enqueue, exit, attach from elsewhere; states by id;
a durable router killed and started again on the same --data."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import squall
from conftest import wait_for

pytestmark = pytest.mark.timeout(240)


def square_later(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x * x


def logged(log_path: str, key: int, seconds: float) -> int:
    with open(log_path, "a") as log:
        log.write(f"{key}\n")
    time.sleep(seconds)
    return key


def wait_for_file(path: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return "released"


def fail_with(message: str) -> None:
    raise KeyError(message)


def _client_script(address: str, ids_path: Path, count: int, seconds: float, log: str = "") -> str:
    """A client process that enqueues ``count`` tasks, writes their ids and exits at once."""
    call = (
        f"ex.enqueue_map(logged, [{log!r}] * {count}, range({count}), [{seconds}] * {count})"
        if log
        else f"ex.enqueue_map(square_later, range({count}), [{seconds}] * {count})"
    )
    return textwrap.dedent(
        f"""
        import json, os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import squall
        from test_background import logged, square_later
        ex = squall.Executor({address!r}, connect_timeout=10)
        futures = {call}
        with open({str(ids_path)!r}, "w") as out:
            json.dump([f.id for f in futures], out)
        os._exit(0)  # no shutdown: the tasks must not depend on this process
        """
    )


def _run_client(script: str) -> None:
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_a_later_process_attaches_to_every_task_of_a_client_that_exited(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=2, concurrency=200)
    ids_path = tmp_path / "ids.json"
    _run_client(_client_script(cluster.address, ids_path, 2000, 0.01))
    task_ids = json.loads(ids_path.read_text())
    assert len(set(task_ids)) == 2000
    assert task_ids == sorted(task_ids)  # ids sort by submit time
    with cluster.executor() as ex:
        futures = [ex.attach(task_id) for task_id in task_ids]
        assert [f.result(timeout=60) for f in futures] == [x * x for x in range(2000)]
        info = ex.task_info(task_ids[7])
        assert info.state == "succeeded" and info.attempts == 1
        assert info.function.endswith("square_later")


def test_task_info_follows_a_task_through_every_state(cluster, tmp_path) -> None:
    cluster.start_router("--result-ttl", "1")
    release = str(tmp_path / "release")
    with cluster.executor() as ex:
        queued = ex.enqueue(wait_for_file, release, 60)  # no worker yet: it waits
        assert ex.task_info(queued.id).state == "queued"
        doomed = ex.enqueue(wait_for_file, release, 60)
        assert ex.cancel(doomed.id) is True
        assert ex.task_info(doomed.id).state == "cancelled"
        cluster.start_workers(processes=1, concurrency=10)
        wait_for(lambda: ex.task_info(queued.id).state == "running", 20, "task started")
        info = ex.task_info(queued.id)
        assert info.started is not None and info.finished is None
        Path(release).touch()
        assert queued.result(timeout=20) == "released"
        info = ex.task_info(queued.id)
        assert info.state == "succeeded" and info.finished >= info.started
        failing = ex.enqueue(fail_with, "no such thing")
        with pytest.raises(KeyError):
            failing.result(timeout=20)
        info = ex.task_info(failing.id)
        assert info.state == "failed"
        assert info.error_type == "KeyError" and "no such thing" in (info.error_message or "")
        with pytest.raises(squall.TaskNotFound, match="never enqueued"):
            ex.task_info(squall.Future().id)
        with pytest.raises(squall.TaskNotFound, match="not a squall task id"):
            ex.task_info("nope")
        # a TTL of 1 s: the outcome goes (the router sweeps once per heartbeat)
        wait_for(lambda: _not_found(ex, queued.id), 10, "outcome expired")
        with pytest.raises(squall.TaskNotFound, match="expired"):
            ex.attach(queued.id).result(timeout=10)


def _not_found(ex: squall.Executor, task_id: str) -> bool:
    try:
        ex.task_info(task_id)
    except squall.TaskNotFound:
        return True
    return False


def test_several_clients_attached_to_one_task_all_get_its_outcome(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    release = str(tmp_path / "release")
    with cluster.executor() as a, cluster.executor() as b, cluster.executor() as c:
        task = a.enqueue(wait_for_file, release, 60)
        watchers = [b.attach(task.id), c.attach(task.id), c.attach(task.id)]
        time.sleep(0.3)
        assert not any(w.done() for w in watchers)
        Path(release).touch()
        assert task.result(timeout=20) == "released"
        assert [w.result(timeout=20) for w in watchers] == ["released"] * 3


def test_enqueue_refuses_an_unpicklable_argument_naming_it(cluster) -> None:
    cluster.start_router()
    with cluster.executor() as ex:
        with pytest.raises(squall.SerializationError):
            ex.enqueue(square_later, (i for i in range(3)), 0)


def test_a_killed_durable_router_comes_back_with_every_task(cluster, tmp_path) -> None:
    """SIGKILL the router while 5,000 background tasks (their client gone) are queued and
    running; start it again on the same --data: each task ends with one outcome, and only
    tasks that were running at the kill may have run twice."""
    data = str(tmp_path / "data")
    router = cluster.start_router("--data", data)
    address = cluster.address
    concurrency = 100
    cluster.start_workers(2, concurrency)
    log = str(tmp_path / "runs.log")
    ids_path = tmp_path / "ids.json"
    _run_client(_client_script(address, ids_path, 5000, 0.05, log))
    task_ids = json.loads(ids_path.read_text())
    wait_for(lambda: _runs(log) and sum(_runs(log).values()) > 1500, 60, "tasks running")
    router.popen.send_signal(signal.SIGKILL)
    router.popen.wait()
    ran_before = set(_runs(log))
    cluster.router = cluster.start("router", "--bind", address, "--insecure", "--data", data)
    wait_for(lambda: _stats_ok(cluster), 20, "router back")
    with cluster.executor() as ex:
        futures = [ex.attach(task_id) for task_id in task_ids]
        assert [f.result(timeout=120) for f in futures] == list(range(5000))
        states = collections.Counter(ex.task_info(t).state for t in task_ids[::50])
        assert states == {"succeeded": 100}
    runs = _runs(log)
    assert set(runs) == set(range(5000))
    twice = [key for key, n in runs.items() if n > 1]
    # At most the tasks that were running at the kill (2 processes x concurrency slots) ran
    # again; a task whose result the workers sent again after the restart did not.
    assert len(twice) <= 2 * concurrency, twice
    assert all(key in ran_before for key in twice)


def _stats_ok(cluster) -> bool:
    try:
        return cluster.stats()["workers"] >= 2
    except AssertionError:
        return False


def _runs(log: str) -> collections.Counter[int]:
    if not os.path.exists(log):
        return collections.Counter()
    with open(log) as f:
        return collections.Counter(int(line) for line in f.read().split())


def test_a_damaged_store_is_refused_in_one_line_and_left_as_it_was(cluster, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "squall.db"
    db.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    before = db.read_bytes()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "squall",
            "router",
            "--bind",
            f"ipc://{tmp_path}/r.sock",
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "squall.db" in lines[0], proc.stderr
    assert db.read_bytes() == before


def echo_bytes(n: int) -> bytes:
    return b"r" * 100


def test_200000_kept_outcomes_stay_within_max_kept_bytes_and_bounded_router_memory(
    cluster, tmp_path
) -> None:
    import psutil

    bound = 8 << 20
    router = cluster.start_router("--data", str(tmp_path / "data"), "--max-kept-bytes", str(bound))
    cluster.start_workers(processes=2, concurrency=1000)
    rss = psutil.Process(router.pid)
    with cluster.executor() as ex:
        warm = ex.enqueue_map(echo_bytes, range(2000))
        [f.result(timeout=60) for f in warm]
        before = rss.memory_info().rss
        peak_kept = 0
        first = warm[0].id
        for _ in range(10):
            futures = ex.enqueue_map(echo_bytes, range(20_000))
            [f.result(timeout=120) for f in futures]
            del futures
            peak_kept = max(peak_kept, cluster.stats()["kept_bytes"])
        growth_mb = (rss.memory_info().rss - before) / 2**20
        wait_for(lambda: cluster.stats()["kept_bytes"] <= bound, 10, "store back within bound")
        with pytest.raises(squall.TaskNotFound, match="expired"):
            ex.task_info(first)  # the oldest outcomes went first
    assert growth_mb < 64, growth_mb
    assert "--max-kept-bytes" in router.output()


def takes_timeout(timeout: float) -> float:
    return timeout


def test_options_apply_to_background_tasks(cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    with cluster.executor() as ex:
        assert ex.options(timeout=5).enqueue(takes_timeout, timeout=1).result(timeout=20) == 1
        slow = ex.options(timeout=0.2).enqueue(square_later, 3, 5.0)
        with pytest.raises(squall.TaskTimeout):
            slow.result(timeout=20)
        assert ex.task_info(slow.id).state == "failed"
        kept = ex.options(retries=1).enqueue_map(square_later, [2, 3], [0, 0], keep=60)
        assert [f.result(timeout=20) for f in kept] == [4, 9]
        info = ex.task_info(kept[0].id)
        assert info.expires is not None and 55 < info.expires - info.finished <= 60


def test_the_asyncio_executor_enqueues_attaches_and_asks(cluster, tmp_path) -> None:
    import asyncio

    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    release = str(tmp_path / "release")

    async def main() -> None:
        async with squall.AsyncExecutor(cluster.address, connect_timeout=10) as aex:
            futures = await aex.enqueue_map(square_later, range(50), [0] * 50)
            assert [await f for f in futures] == [x * x for x in range(50)]
            waiting = await aex.enqueue(wait_for_file, release, 60)
            attached = aex.attach(waiting.id)
            wait_until = asyncio.get_running_loop().time() + 10
            while (await aex.task_info(waiting.id)).state != "running":
                assert asyncio.get_running_loop().time() < wait_until
                await asyncio.sleep(0.05)
            Path(release).touch()
            assert await attached == "released"
            assert (await aex.task_info(waiting.id)).state == "succeeded"
            assert await aex.cancel(waiting.id) is False
            with pytest.raises(squall.TaskNotFound):
                await aex.task_info(squall.Future().id)

    asyncio.run(main())


def test_fresh_workers_run_tasks_a_restarted_durable_router_recovered(cluster, tmp_path) -> None:
    data = str(tmp_path / "data")
    router = cluster.start_router("--data", data)
    with cluster.executor() as ex:
        rate = 3

        def times_rate(x: int) -> int:  # a closure: its body lives only in the store now
            return x * rate

        task_ids = [f.id for f in ex.enqueue_map(times_rate, range(20))]
    router.popen.send_signal(signal.SIGKILL)
    router.popen.wait()
    cluster.router = cluster.start(
        "router", "--bind", cluster.address, "--insecure", "--data", data
    )
    wait_for(lambda: _stats_ok_workers(cluster, 0), 20, "router back")
    cluster.start_workers(processes=1, concurrency=10)
    with cluster.executor() as ex:
        assert [ex.attach(t).result(timeout=30) for t in task_ids] == [x * 3 for x in range(20)]


def _stats_ok_workers(cluster, workers: int) -> bool:
    try:
        return cluster.stats()["workers"] >= workers
    except AssertionError:
        return False
