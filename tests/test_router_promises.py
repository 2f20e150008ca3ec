"""The router keeps the written promise under faults: no re-runs without a death, fair
dispatch between clients, one re-registration per partition, cheap mass cancels."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import zmq

from conftest import Cluster, wait_for
from squall import protocol, serialization
from squall.protocol import ErrorCode, MsgType

pytestmark = pytest.mark.timeout(120)


def logged_sleep(log: str, task: int, seconds: float) -> int:
    """Append this task's id to ``log`` (O_APPEND: one whole line per write), then sleep."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"%d\n" % task)
    finally:
        os.close(fd)
    time.sleep(seconds)
    return task


def test_a_paused_router_runs_no_finished_task_again(cluster: Cluster, tmp_path: Path) -> None:
    """SIGSTOP the router past every liveness window while tasks run, then SIGCONT: clients
    and workers took it for lost, yet each task runs exactly once (no worker died)."""
    router = cluster.start_router()
    cluster.start_workers(2, 200)
    log = str(tmp_path / "starts.log")
    with cluster.executor() as ex:
        futures = [ex.submit(logged_sleep, log, i, 0.3 + (i % 10) / 10) for i in range(1000)]
        wait_for(lambda: Path(log).exists() and len(Path(log).read_bytes()) > 500, 20, "started")
        os.kill(router.pid, signal.SIGSTOP)
        time.sleep(4.0)  # 4 x the workers' liveness, 4 x the client's (FAST_ENV)
        os.kill(router.pid, signal.SIGCONT)
        assert sorted(f.result(timeout=60) for f in futures) == list(range(1000))
    starts = Path(log).read_text().split()
    assert len(starts) == 1000, f"{len(starts) - len(set(starts))} tasks ran more than once"
    assert "router was not running; peers keep their leases" in router.output()


def test_a_small_batch_does_not_wait_behind_another_clients_backlog(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_workers(1, 50)
    with cluster.executor() as big, cluster.executor() as small:
        backlog = [big.submit(time.sleep, 0.01) for _ in range(20_000)]  # ~4 s of work
        wait_for(lambda: cluster.stats()["queued"] > 10_000, 20, "the backlog queued")
        quick = [small.submit(abs, -i) for i in range(20)]
        assert [f.result(timeout=30) for f in quick] == list(range(20))
        done = sum(f.done() for f in backlog)
        assert done < 10_000, f"the small batch waited for {done} of the other client's tasks"
        for f in backlog:
            f.cancel()


def test_a_burst_of_stale_messages_gets_one_hello_request(cluster: Cluster) -> None:
    """After a partition, a worker's stale results each used to get an UNKNOWN_PEER reply,
    and it registered again once per reply."""
    cluster.start_router()
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as ghost:
        ghost.setsockopt(zmq.LINGER, 0)
        ghost.setsockopt(zmq.ROUTING_ID, protocol.new_peer_id())
        ghost.connect(cluster.address)
        for i in range(300):
            ghost.send_multipart(protocol.encode_result([(i, 0, [b"late"])]))
        replies = []
        deadline = time.monotonic() + 0.8
        while (left := deadline - time.monotonic()) > 0:
            if ghost.poll(left * 1000):
                type_, body = protocol.parse_header(ghost.recv_multipart())
                replies.append((type_, protocol.decode_error(body)[0]))
    assert replies == [(MsgType.ERROR, ErrorCode.UNKNOWN_PEER)]


def test_cancelling_a_hundred_thousand_queued_tasks_is_cheap(cluster: Cluster) -> None:
    """Closing a big map cancels every queued task: deque.remove per cancel took the router
    seconds of CPU (minutes when the last are cancelled first)."""
    router = cluster.start_router()
    fn_hash, body = serialization.dumps_function(abs)
    args = serialization.dumps_call((-1,), {})
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as client:
        client.setsockopt(zmq.LINGER, 0)
        client.setsockopt(zmq.ROUTING_ID, protocol.new_peer_id())
        client.connect(cluster.address)
        client.send_multipart(protocol.encode_hello(protocol.Role.CLIENT, os.getpid()))
        assert client.poll(5000)
        client.recv_multipart()  # WELCOME
        client.send_multipart(protocol.encode_fn_body(fn_hash, body))
        for start in range(1, 100_001, 1000):
            items = [
                protocol.SubmitItem(i, fn_hash, protocol.Kind.CALL, 0, (), args)
                for i in range(start, start + 1000)
            ]
            client.send_multipart(protocol.encode_submit(items))
        wait_for(lambda: cluster.stats()["queued"] == 100_000, 30, "all queued")
        cpu = psutil.Process(router.pid)
        before = sum(cpu.cpu_times()[:2])
        for end in range(100_000, 0, -1000):  # the last first: the worst case for a deque
            client.send_multipart(protocol.encode_cancel(list(range(end, end - 1000, -1))))
        wait_for(lambda: cluster.stats()["queued"] == 0, 30, "all cancelled")
        spent = sum(cpu.cpu_times()[:2]) - before
    assert spent < 3.0, f"the router spent {spent:.1f} s of CPU on 100,000 cancels"
