"""Worker processes keep the written promise (#11): a blocked hub gets no new work and is
restarted blaming only its blocker, the restart report always arrives, a task's fork() child
ends with its worker and never runs squall, and processes are recycled losing nothing.

Every task that matters logs each of its executions (one O_APPEND line: key and pid), so a test
can tell a task that ran twice from one whose result came twice.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import zmq

import squall
from conftest import FAST_ENV, Cluster, wait_for
from squall import protocol, serialization
from squall.protocol import Kind, MsgType, Status, TaskItem

pytestmark = pytest.mark.timeout(120)


def note(log: str, key: object) -> None:
    """Append ``key pid`` to ``log`` in one write."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def runs(log: str | Path) -> dict[str, list[int]]:
    """key -> pids of each execution logged by :func:`note`."""
    found: dict[str, list[int]] = collections.defaultdict(list)
    path = Path(log)
    for line in path.read_text().splitlines() if path.exists() else []:
        key, pid = line.split()
        found[key].append(int(pid))
    return found


def spin(seconds: float, log: str | None = None, key: object = "spin") -> int:
    """Hold the hub (and the GIL, between bytecodes) without ever yielding."""
    if log is not None:
        note(log, key)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return os.getpid()


def logged_sleep(log: str, key: object, seconds: float) -> int:
    note(log, key)
    time.sleep(seconds)
    return os.getpid()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _worker_pids(node: squall.Executor | object, cluster: Cluster) -> list[int]:
    return sorted(cluster.stats()["worker_pids"])


# -- item 3: a blocked hub gets no new tasks, and is restarted past --block-limit ---------------


def test_a_blocked_process_gets_no_new_tasks_and_its_unread_ones_run_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A task spinning on one of two processes: 100 short tasks all finish on the other one,
    each exactly once, while it spins; the spinner is not redelivered."""
    cluster.start_router()
    cluster.start_workers(2, 100, "--block-limit", "0")
    log = str(tmp_path / "runs.log")
    with cluster.executor() as ex:
        spinner = ex.submit(spin, 12.0, log)
        wait_for(lambda: "spin" in runs(log), 20, "the spinner started")
        stuck = runs(log)["spin"][0]
        # Sent at once, before the router can know of the block: some go to the stuck process
        # and sit unread in its socket until the router takes them back.
        short = [ex.submit(logged_sleep, log, i, 0.05) for i in range(100)]
        pids = [f.result(timeout=9) for f in short]  # well before the spinner ends
        assert not spinner.done()
        assert stuck not in pids
        assert spinner.result(timeout=30) == stuck
        time.sleep(0.5)  # the unblocked hub has read what was taken back from it
        stats = cluster.stats()
    executed = runs(log)
    assert all(len(executed[str(i)]) == 1 for i in range(100)), "a short task ran twice"
    assert all(stuck not in executed[str(i)] for i in range(100))
    assert stats["redelivered"] == 0 and stats["worker_deaths"] == 0


def test_block_limit_restarts_the_process_and_blames_only_the_blocker(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A spinner without a timeout blocks neighbours that have one: past --block-limit the
    spinner fails with TaskTimeout and the neighbours, whose deadlines passed only because of
    it, run again elsewhere and succeed, with no death counted."""
    cluster.start_router()
    cluster.start_workers(1, 20, "--block-limit", "2.5")
    log = str(tmp_path / "runs.log")
    with cluster.executor() as ex:
        neighbours = [ex.submit(logged_sleep, log, i, 0.6, timeout=1.5) for i in range(5)]
        wait_for(lambda: len(runs(log)) == 5, 20, "the neighbours started")
        spinner = ex.submit(spin, 300.0, log)
        with pytest.raises(squall.TaskTimeout, match="--block-limit of 2.5 s"):
            spinner.result(timeout=30)
        pids = [f.result(timeout=30) for f in neighbours]
        first = runs(log)["spin"][0]
        wait_for(lambda: cluster.stats()["workers"] == 1, 20, "the process was replaced")
        assert ex.submit(abs, -3).result(timeout=20) == 3
        stats = cluster.stats()
    assert first not in pids  # they ran again, on the fresh process
    assert stats["timed_out"] == 1 and stats["worker_deaths"] == 0
    assert len(runs(log)["spin"]) == 1  # the blocker never wedged a second process


def test_a_long_cpu_task_under_the_block_limit_is_never_redelivered(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_workers(1, 10, "--block-limit", "8")
    with cluster.executor() as ex:
        assert ex.submit(spin, 4.0).result(timeout=60) > 0
        stats = cluster.stats()
    assert stats["redelivered"] == 0 and stats["worker_deaths"] == 0 and stats["timed_out"] == 0


# -- item 4: blame the task that holds the hub ------------------------------------------------


def test_a_spinner_past_its_timeout_is_blamed_not_its_neighbours(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_router()
    cluster.start_workers(1, 20, "--block-limit", "0")
    log = str(tmp_path / "runs.log")
    with cluster.executor() as ex:
        # Deadlines before the spinner's: they pass first, while it blocks the hub.
        neighbours = [ex.submit(logged_sleep, log, i, 0.3, timeout=1.0) for i in range(5)]
        wait_for(lambda: len(runs(log)) == 5, 20, "the neighbours started")
        spinner = ex.submit(spin, 300.0, log, timeout=2.0)
        with pytest.raises(squall.TaskTimeout, match="blocked its worker past its timeout"):
            spinner.result(timeout=30)
        assert all(f.result(timeout=30) > 0 for f in neighbours)
        stats = cluster.stats()
    assert stats["timed_out"] == 1 and stats["worker_deaths"] == 0


# -- item 5: the restart report arrives before the process ends -------------------------------


def test_the_timeout_report_arrives_in_each_of_20_restarts(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_workers(2, 1)
    with cluster.executor() as ex:
        futures = [ex.submit(spin, 300.0, timeout=0.2) for _ in range(20)]
        outcomes = collections.Counter()
        for f in futures:
            try:
                f.result(timeout=100)
                outcomes["result"] += 1
            except squall.TaskTimeout:
                outcomes["TaskTimeout"] += 1
            except squall.WorkerLost:
                outcomes["WorkerLost"] += 1
        stats = cluster.stats()
    assert outcomes == {"TaskTimeout": 20}
    assert stats["timed_out"] == 20
    assert stats["worker_deaths"] == 0 and stats["redelivered"] == 0


# -- item 3: a task cancelled before it starts never runs -------------------------------------


def job(log: str, key: int, seconds: float) -> int:
    note(log, key)
    return spin(seconds)


class FakeRouter:
    """A ROUTER socket standing in for the router, to put messages in a worker's socket in a
    chosen order."""

    def __init__(self, address: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(address)
        self.worker = b""

    def receive(self, wanted: MsgType, timeout: float = 20) -> tuple[bytes, list[bytes]]:
        """The next message of type ``wanted`` from the worker's own socket."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(left * 1000):
                break
            peer, *frames = self.socket.recv_multipart()
            if peer.endswith(b"/watchdog"):
                continue
            type_, body = protocol.parse_header(frames)
            if type_ is wanted:
                self.worker = peer
                return body, frames[1:]
        raise AssertionError(f"no {wanted.name} from the worker")

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart([self.worker, *frames])

    def close(self) -> None:
        self.socket.close()
        self.context.term()


def test_a_task_cancelled_in_the_same_drain_as_it_arrived_never_starts(tmp_path: Path) -> None:
    """TASK then CANCEL, both waiting in the socket of a blocked hub (as when the router takes
    back unread tasks): when the hub runs again the task must not start."""
    router = FakeRouter(f"ipc://{tmp_path}/r")
    log = str(tmp_path / "runs.log")
    node = subprocess.Popen(
        [sys.executable, "-m", "squall", "worker", "--connect", f"ipc://{tmp_path}/r"]
        + ["--processes", "1", "--concurrency", "10"],
        env={**os.environ, **FAST_ENV},
    )
    try:
        router.receive(MsgType.HELLO)
        router.send(protocol.encode_welcome(0.2, 1, epoch=7))
        fn_hash, body = serialization.dumps_function(job)

        def task(task_id: int, key: int, seconds: float) -> TaskItem:
            frames = serialization.dumps_call((log, key, seconds), {})
            return TaskItem(task_id, fn_hash, int(Kind.CALL), 0, 0, [], frames)

        router.send(protocol.encode_task([task(1, 1, 1.5)]))
        router.receive(MsgType.FN_FETCH)
        router.send(protocol.encode_fn_body(fn_hash, body))
        wait_for(lambda: "1" in runs(log), 20, "the blocker started")
        router.send(protocol.encode_task([task(2, 2, 0.0)]))
        router.send(protocol.encode_cancel([2]))
        outcomes: dict[int, int] = {}
        while len(outcomes) < 2:
            body, payload = router.receive(MsgType.RESULT)
            outcomes.update((r.task_id, r.status) for r in protocol.decode_result(body, payload))
        assert outcomes == {1: Status.OK, 2: Status.CANCELLED}
        assert set(runs(log)) == {"1"}, "the cancelled task ran"
    finally:
        node.terminate()
        node.wait(15)
        router.close()


# -- item 8: a task's fork() child ends with its worker and never runs squall -----------------


def fork_child(log: str, child: str) -> int:
    """Fork; the child does ``child`` (``sleep``, ``spin`` or ``return``); the parent returns
    the child's pid. A neighbour's greenlet that the child could run logs its end."""
    pid = os.fork()
    if pid:
        return pid
    if child == "return":
        return 0  # back into squall, were nothing done about it
    note(log, "child")
    if child == "sleep":
        time.sleep(120)  # gevent-patched: the child's hub runs
    else:
        spin(120.0)
    os._exit(0)


def test_a_forked_child_that_returns_ends_at_once_and_runs_nothing_of_squall(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_router()
    cluster.start_workers(1, 10)
    log = str(tmp_path / "runs.log")
    with cluster.executor() as ex:
        neighbour = ex.submit(logged_sleep, log, "neighbour", 1.0)
        wait_for(lambda: "neighbour" in runs(log), 20, "the neighbour started")
        child = ex.submit(fork_child, log, "return").result(timeout=20)
        assert child > 0  # the parent's result, not the child's
        wait_for(lambda: _gone(child), 5, "the child returned into squall and lived on")
        worker = neighbour.result(timeout=20)
        note(log, "after")
        assert ex.submit(abs, -4).result(timeout=20) == 4
        stats = cluster.stats()
    assert runs(log)["neighbour"] == [worker]  # it ran once, in the worker only
    assert stats["workers"] == 1 and stats["protocol_errors"] == 0
    assert stats["stale_results"] == 0


def test_a_forked_child_never_runs_its_parents_other_tasks(cluster: Cluster, tmp_path) -> None:
    """The child's hub runs (it sleeps), yet the neighbour task copied into it does not."""
    cluster.start_router()
    cluster.start_workers(1, 10)
    log = str(tmp_path / "runs.log")
    with cluster.executor() as ex:
        neighbour = ex.submit(logged_sleep, log, "neighbour", 1.0)
        wait_for(lambda: "neighbour" in runs(log), 20, "the neighbour started")
        child = ex.submit(fork_child, log, "sleep").result(timeout=20)
        neighbour.result(timeout=20)
        time.sleep(1.5)  # the neighbour's sleep ended in the child too, were it running there
        assert not _gone(child)
        worker = cluster.stats()["worker_pids"][0]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: _gone(child), 10, "the child outlived its SIGKILLed worker")
    assert runs(log)["child"] == [child]


@pytest.mark.parametrize("child", ["sleep", "spin"])
def test_a_forked_child_ends_with_its_node(cluster: Cluster, tmp_path: Path, child: str) -> None:
    cluster.start_router()
    node = cluster.start_workers(1, 10, "--grace", "1")
    log = str(tmp_path / "runs.log")
    with cluster.executor() as ex:
        pid = ex.submit(fork_child, log, child).result(timeout=20)
        wait_for(lambda: "child" in runs(log), 20, "the child started")
        assert not _gone(pid)
        node.popen.send_signal(signal.SIGTERM)
        node.popen.wait(30)
        wait_for(lambda: _gone(pid), 10, "the child outlived the node")


def test_children_a_task_starts_with_subprocess_end_with_its_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    """No fork hook runs for these: the worker's process group, which the node kills."""
    cluster.start_router()
    cluster.start_workers(1, 10)
    with cluster.executor() as ex:
        pid = ex.submit(lambda: subprocess.Popen(["sleep", "120"]).pid).result(timeout=20)
        assert not _gone(pid)
        os.kill(cluster.stats()["worker_pids"][0], signal.SIGKILL)
        wait_for(lambda: _gone(pid), 10, "the subprocess outlived its worker")


# -- item 9: recycling ------------------------------------------------------------------------


def test_a_process_is_replaced_after_max_tasks_losing_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_router()
    cluster.start_workers(1, 4, "--max-tasks-per-process", "10")
    log = str(tmp_path / "runs.log")
    with cluster.executor() as ex:
        futures = [ex.submit(logged_sleep, log, i, 0.05) for i in range(60)]
        pids = [f.result(timeout=90) for f in futures]
        stats = cluster.stats()
    executed = runs(log)
    assert sorted(executed, key=int) == [str(i) for i in range(60)]
    assert all(len(p) == 1 for p in executed.values()), "a task ran twice"
    per_process = collections.Counter(pids)
    assert len(per_process) >= 6 and max(per_process.values()) <= 10, per_process
    assert stats["worker_deaths"] == 0


def leak(mib: int, seconds: float) -> int:
    """Keep ``mib`` MiB more alive in this process (touched, so resident), then sleep."""
    import builtins

    kept = builtins.__dict__.setdefault("_test_leak", [])
    kept.append(b"\x01" * (mib << 20))
    time.sleep(seconds)
    return os.getpid()


def test_a_process_past_max_memory_is_replaced_losing_nothing(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_workers(1, 1, "--max-memory-per-process", "200")
    with cluster.executor() as ex:
        futures = [ex.submit(leak, 40, 0.3) for _ in range(24)]
        pids = [f.result(timeout=90) for f in futures]
        stats = cluster.stats()
        # Each process lived until it passed 200 MiB: at most about 5 of these tasks.
    per_process = collections.Counter(pids)
    assert len(per_process) >= 3 and max(per_process.values()) <= 7, per_process
    assert stats["worker_deaths"] == 0


# -- item 7: a task holding the GIL does not make a live process look dead -------------------


def hold_gil(seconds: int) -> int:
    """A C call that keeps the GIL throughout: the watchdog thread cannot run either."""
    import ctypes

    ctypes.PyDLL(None).sleep(seconds)  # PyDLL: the GIL is not released around the call
    return os.getpid()


def test_a_task_holding_the_gil_is_not_taken_for_a_dead_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    """5 s holding the GIL, five times the router's liveness: its node vouches for it, so
    nothing is run twice, no death is counted, and new work goes to the other process."""
    cluster.start_router()
    cluster.start_workers(2, 50)
    log = str(tmp_path / "runs.log")
    with cluster.executor() as ex:
        holder = ex.submit(hold_gil, 5)
        wait_for(lambda: holder.running(), 20, "the GIL holder started")
        time.sleep(1.5)  # past the router's liveness: it would have declared it dead
        short = [ex.submit(logged_sleep, log, i, 0.05) for i in range(50)]
        pids = [f.result(timeout=20) for f in short]
        assert not holder.done()
        holder_pid = holder.result(timeout=30)
        stats = cluster.stats()
    assert holder_pid not in pids
    assert all(len(p) == 1 for p in runs(log).values())
    assert stats["worker_deaths"] == 0 and stats["redelivered"] == 0
    assert stats["stale_results"] == 0 and stats["workers"] == 2


def test_a_process_holding_the_gil_past_the_block_limit_is_replaced(cluster: Cluster) -> None:
    """Nobody can name the task (its watchdog never ran), so it is an ordinary death; the
    node replaces the process and goes on serving."""
    cluster.start_router()
    cluster.start_workers(1, 10, "--block-limit", "2")
    with cluster.executor() as ex:
        holder = ex.submit(hold_gil, 600)
        with pytest.raises(squall.WorkerLost, match="died 3 times"):
            holder.result(timeout=60)
        wait_for(lambda: cluster.stats()["workers"] == 1, 20, "the node serves again")
        assert ex.submit(abs, -6).result(timeout=20) == 6


# -- item 6 (the node's half): a crash names the task that was running ------------------------


def crash() -> None:
    import ctypes

    ctypes.string_at(0)  # SIGSEGV, in C


def test_a_segfault_names_the_one_task_that_was_running(cluster: Cluster) -> None:
    """The crashed process's last words reach its node: the culprit, the same task id at each
    of its three crashes, though different neighbours shared the process each time."""
    cluster.start_router()
    node = cluster.start_workers(1, 50)
    with cluster.executor() as ex:
        neighbours = [ex.submit(time.sleep, 0.5) for _ in range(5)]
        time.sleep(0.3)
        culprit = ex.submit(crash)
        with pytest.raises(squall.WorkerLost, match="died 3 times"):
            culprit.result(timeout=60)
        assert [f.result(timeout=60) for f in neighbours] == [None] * 5
    lines = [x for x in node.output().splitlines() if "crashed on a fatal signal" in x]
    assert len(lines) == 3 and all("signal=SIGSEGV" in x for x in lines), lines
    named = {x.split("culprit_task=")[1].split()[0] for x in lines}
    assert len(named) == 1 and named != {"None"}, lines


def fork_and_crash() -> int:
    pid = os.fork()
    if pid == 0:
        crash()
    os.waitpid(pid, 0)
    return pid


def test_a_forked_childs_crash_is_not_taken_for_its_workers(cluster: Cluster) -> None:
    cluster.start_router()
    node = cluster.start_workers(1, 10)
    with cluster.executor() as ex:
        assert ex.submit(fork_and_crash).result(timeout=20) > 0
        worker = cluster.stats()["worker_pids"]
        assert ex.submit(hold_gil, 3).result(timeout=30) in worker  # vouched for as before
        stats = cluster.stats()
    assert "crashed on a fatal signal" not in node.output()
    assert stats["worker_deaths"] == 0
