"""Attacks on the router by peers that hold a listed key (or none), each against real processes.

Each test mounts one attack from issue #10 and checks that it gets nothing: a session takeover
by routing id, a libzmq abort through colliding ids, a slow reader stalling everyone, memory
floods, and running another client's cached function body.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

import squall
from conftest import Cluster, make_keys, wait_for
from squall import protocol, serialization
from squall.auth import apply_client_keys
from squall.protocol import Kind, MsgType, Role, Status, SubmitItem

pytestmark = pytest.mark.timeout(120)


def raw_peer(
    ctx: zmq.Context[Any],
    address: str,
    keys: Path | None = None,
    name: str = "",
    peer_id: bytes | None = None,
) -> zmq.Socket[Any]:
    """A DEALER speaking squall's protocol by hand, with the id and key the attacker picks."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if peer_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, peer_id)
    if keys is not None:
        apply_client_keys(sock, keys, name)
    sock.connect(address)
    return sock


def receive(sock: zmq.Socket[Any], seconds: float) -> list[tuple[MsgType, bytes, list[bytes]]]:
    """Everything ``sock`` receives within ``seconds``."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(left * 1000):
            frames = sock.recv_multipart()
            type_, body = protocol.parse_header(frames)
            got.append((type_, body, frames[1:]))
    return got


def expect(sock: zmq.Socket[Any], wanted: MsgType, seconds: float = 10) -> tuple[bytes, list[Any]]:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        assert sock.poll(left * 1000), f"no {wanted.name} within {seconds} s"
        frames = sock.recv_multipart()
        type_, body = protocol.parse_header(frames)
        if type_ is wanted:
            return body, frames[1:]
    raise AssertionError(f"no {wanted.name} within {seconds} s")


def submit_raw(sock: zmq.Socket[Any], fn: Any, task_id: int, *args: Any, deps: Any = ()) -> bytes:
    """Upload ``fn``'s body and submit one call of it, as a client does; return its hash."""
    fn_hash, body = serialization.dumps_function(fn)
    sock.send_multipart(protocol.encode_fn_body(fn_hash, body))
    frames = serialization.dumps_call(args, {})
    sock.send_multipart(
        protocol.encode_submit([SubmitItem(task_id, fn_hash, Kind.CALL, 0, deps, frames)])
    )
    return fn_hash


def bobs_secret(delay: float) -> str:
    time.sleep(delay)
    return "bob's secret"


def peak_rss(pid: int) -> int:
    """The process's high-water RSS in bytes (VmHWM): catches a spike between two samples."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_another_key_cannot_take_over_a_session_by_its_routing_id(secured) -> None:
    """bob's connection drops; alice reconnects under bob's routing id at once. She must get
    neither his result nor his heartbeats, nor his outcome through a dependency."""
    cluster, keys, alice = secured
    bob_id = protocol.new_peer_id()  # the attacker learnt it (libzmq's ids were predictable)
    with zmq.Context() as ctx:
        bob = raw_peer(ctx, cluster.address, keys["bob"], "bob", bob_id)
        bob.send_multipart(protocol.encode_hello(Role.CLIENT, 1))
        expect(bob, MsgType.WELCOME)
        submit_raw(bob, bobs_secret, 1, 1.5)
        expect(bob, MsgType.STARTED)
        bob.close(linger=0)  # bob's connection resets
        time.sleep(0.2)
        mallory = raw_peer(ctx, cluster.address, keys["alice"], "alice", bob_id)
        mallory.send_multipart(protocol.encode_heartbeat())
        submit_raw(mallory, bobs_secret, 7, 0.0, deps=(1,))  # bob's task id as a dependency
        got = receive(mallory, 4.0)
        mallory.close(linger=0)
    types = [t for t, _, _ in got]
    assert MsgType.RESULT not in types, "the impostor received bob's result"
    # A heartbeat may slip through while its first message is on the way, no more.
    assert types.count(MsgType.HEARTBEAT) <= 1, f"the impostor received {types}"
    stats = alice.stats()
    assert stats["impostors"] >= 1
    assert "worker_pids" not in stats and "clients" not in stats  # scoped by role
    assert alice.submit(abs, -4).result(timeout=30) == 4


def test_colliding_routing_ids_cannot_crash_the_router(cluster: Cluster) -> None:
    """Peers holding the ids libzmq would give the next id-less peers used to make it abort."""
    router = cluster.start_router()
    with zmq.Context() as ctx:
        squatters = []
        for i in range(64):  # the sequence an unseeded libzmq hands out, in every process
            claimed = b"\x00" + (0x6B8B4567 + i).to_bytes(4, "big")
            sock = raw_peer(ctx, cluster.address, peer_id=claimed)
            sock.send_multipart(protocol.encode_stats_request())
            squatters.append(sock)
        for sock in squatters:
            expect(sock, MsgType.STATS)
        for _ in range(16):
            anonymous = raw_peer(ctx, cluster.address)
            anonymous.send_multipart(protocol.encode_stats_request())
            expect(anonymous, MsgType.STATS)
            # ... and an id-less (guessable) peer cannot become a client or worker
            anonymous.send_multipart(protocol.encode_hello(Role.WORKER, 1, 10))
            body, _ = expect(anonymous, MsgType.ERROR)
            assert protocol.decode_error(body)[0] == protocol.ErrorCode.REFUSED
            anonymous.close(linger=0)
        for sock in squatters:
            sock.close(linger=0)
    assert router.popen.poll() is None, "the router died"
    assert cluster.stats()["workers"] == 0


def _idle(pid: int) -> bool:
    """Whether the process used under 5% of a core over the last 0.2 s."""
    process = psutil.Process(pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(0.2)
    return sum(process.cpu_times()[:2]) - before < 0.01


def _p99_of_sequential_calls(ex: squall.Executor, n: int) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        assert ex.submit(abs, -i).result(timeout=10) == i
        times.append(time.perf_counter() - start)
    return statistics.quantiles(times, n=100)[98]


def test_a_peer_that_reads_nothing_delays_no_one_else(cluster: Cluster) -> None:
    router = cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    with (
        cluster.executor() as ex,
        zmq.Context() as ctx,
        raw_peer(ctx, cluster.address, peer_id=protocol.new_peer_id()) as sloth,
    ):
        _p99_of_sequential_calls(ex, 100)  # warm up
        before = _p99_of_sequential_calls(ex, 300)
        sloth.setsockopt(zmq.RCVHWM, 10)
        for _ in range(8000):  # answers pile up: its pipe is full, its backlog grows
            sloth.send_multipart(protocol.encode_stats_request())
        wait_for(lambda: cluster.stats()["backlogged_peers"] > 0, 10, "a backlog for the sloth")
        wait_for(lambda: _idle(router.pid), 20, "the router done with the flood")
        assert cluster.stats()["backlogged_peers"] == 1
        during = _p99_of_sequential_calls(ex, 300)
        # Past the bound (10,000 messages) it is cut off, with a log line.
        for _ in range(40_000):  # (socket buffers on loopback hold several thousand)
            sloth.send_multipart(protocol.encode_stats_request())
        wait_for(lambda: "read too slowly" in router.output(), 20, "the sloth cut off")
        stats = cluster.stats()
        assert stats["peers_cut_off"] == 1 and stats["backlogged_peers"] == 0
        after = _p99_of_sequential_calls(ex, 300)
    # The machine's own noise moves a p99 of 300 calls: the sloth must add nothing beyond it
    # (the old router froze every other client while its backlog was not empty).
    baseline = max(before, after)
    assert during < 2 * baseline + 0.001, (
        f"p99 {during * 1e6:.0f} us with a sloth, {before * 1e6:.0f} / {after * 1e6:.0f} us without"
    )


def big_result(size: int) -> bytes:
    return b"r" * size


def test_recent_outcomes_are_bounded_in_bytes(cluster: Cluster) -> None:
    """Finished outcomes kept for late dependents: 100 x 4 MB used to stay in the router."""
    router = cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    with cluster.executor() as ex:
        assert len(ex.submit(big_result, 1000).result(timeout=30)) == 1000
        before = peak_rss(router.pid)
        for _ in range(10):
            batch = [ex.submit(big_result, 4 << 20) for _ in range(10)]
            assert all(len(f.result(timeout=60)) == 4 << 20 for f in batch)
        stats = cluster.stats()
    assert stats["recent_bytes"] <= 64 << 20  # the default --max-recent-bytes
    growth = (peak_rss(router.pid) - before) / 2**20
    assert growth < 64 + 80, f"router peak RSS grew by {growth:.0f} MB"


def wait_for_file(path: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_queued_arguments_are_bounded_in_bytes(cluster: Cluster, tmp_path: Path) -> None:
    """50 MB arguments queued behind a busy worker: the old router kept every one (20 of them
    added 1 GB); now it holds at most --max-client-bytes and refuses the rest."""
    router = cluster.start_router("--max-client-bytes", "128MiB")
    cluster.start_workers(processes=1, concurrency=1)
    blob = b"a" * (50 << 20)
    release = tmp_path / "release"
    with cluster.executor() as ex:
        # Busy until told: a fixed sleep could end (on a loaded machine) before the 20 uploads
        # do, and the queue would drain under the test.
        blocker = ex.submit(wait_for_file, str(release), 60)
        before = peak_rss(router.pid)
        held, refused = [], 0
        for _ in range(20):  # one at a time: what grows is what the router keeps
            fut = ex.submit(len, blob)
            try:
                fut.result(timeout=0.5)
            except squall.QueueFull as exc:  # retry later: the limit is on what is held
                assert "--max-client-bytes" in str(exc)
                refused += 1
            except concurrent.futures.TimeoutError:
                held.append(fut)  # queued behind the blocker
        growth = (peak_rss(router.pid) - before) / 2**20
        release.touch()
        blocker.result(timeout=30)
        assert [f.result(timeout=60) for f in held] == [50 << 20] * len(held)
    assert len(held) == 2 and refused == 18
    # Held: two arguments (100 MB, under the 128 MiB limit); plus one message being read.
    assert growth < 128 + 50 + 50, f"router peak RSS grew by {growth:.0f} MB"


def test_a_huge_function_body_is_refused_early(cluster: Cluster) -> None:
    """A 300 MB closure used to be copied and hashed inside the router loop."""
    router = cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    ballast = b"b" * (300 << 20)
    with cluster.executor() as ex:
        assert ex.submit(abs, -1).result(timeout=30) == 1
        before = peak_rss(router.pid)
        fut = ex.submit(lambda: len(ballast))
        with pytest.raises(squall.SquallError, match="--max-body-size"):
            fut.result(timeout=60)
        assert ex.submit(abs, -2).result(timeout=30) == 2
    growth = (peak_rss(router.pid) - before) / 2**20
    assert growth < 300 + 80, f"router peak RSS grew by {growth:.0f} MB (a copy of the body)"


def test_knowing_a_hash_does_not_run_another_clients_body(secured, tmp_path: Path) -> None:
    """bob's closure captured a secret; mallory, with another listed key, learns its hash and
    submits it with her own arguments. The router refuses: she never uploaded that body."""
    cluster, keys, alice = secured
    secret = "s3cr3t"
    leak = tmp_path / "leaked"

    def bobs_closure(path: str) -> str:
        Path(path).write_text(secret)
        return "ok"

    with squall.Executor(
        cluster.address, auth=str(keys["bob"]), key="bob", connect_timeout=10
    ) as bob:
        assert bob.submit(bobs_closure, str(tmp_path / "bob")).result(timeout=30) == "ok"
        fn_hash, _ = serialization.dumps_function(bobs_closure)
        with zmq.Context() as ctx:
            mallory = raw_peer(ctx, cluster.address, keys["alice"], "alice", protocol.new_peer_id())
            mallory.send_multipart(protocol.encode_hello(Role.CLIENT, 1))
            expect(mallory, MsgType.WELCOME)
            frames = serialization.dumps_call((str(leak),), {})
            mallory.send_multipart(
                protocol.encode_submit([SubmitItem(1, fn_hash, Kind.CALL, 0, (), frames)])
            )
            body, payload = expect(mallory, MsgType.RESULT)
            ((task_id, status, outcome),) = [
                (r.task_id, r.status, r.frames) for r in protocol.decode_result(body, payload)
            ]
            mallory.close(linger=0)
    assert task_id == 1 and status == Status.ERROR
    assert b"never uploaded by this client" in bytes(outcome[0])
    time.sleep(0.5)
    assert not leak.exists()


def test_a_revoked_client_fails_at_once(secured, tmp_path: Path) -> None:
    cluster, keys, alice = secured
    with squall.Executor(
        cluster.address, auth=str(keys["bob"]), key="bob", connect_timeout=10
    ) as bob:
        waiting = bob.submit(time.sleep, 30)
        time.sleep(0.5)
        (keys["router"] / "clients" / "bob.key").unlink()
        os.kill(cluster.router.pid, signal.SIGHUP)
        with pytest.raises(squall.Refused, match="revoked"):
            waiting.result(timeout=15)
        bob.shutdown(wait=False, cancel_futures=True)
    assert alice.submit(abs, -5).result(timeout=30) == 5


def test_a_client_can_restrict_its_tasks_to_a_worker_group(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Workers can run code in the clients whose tasks they run (results are unpickled there):
    a client may choose them. node2's key is in workers/trusted/, node1's is not."""
    keys = make_keys(tmp_path / "keys")
    trusted = keys["router"] / "workers" / "trusted"
    trusted.mkdir()
    (keys["router"] / "workers" / "node2.key").rename(trusted / "node2.key")
    cluster.start_keyed_router(keys)
    nodes = {name: cluster.start_keyed_worker(keys, name) for name in ("node1", "node2")}
    with (
        squall.Executor(
            cluster.address,
            auth=str(keys["alice"]),
            key="alice",
            worker_group="trusted",
            connect_timeout=15,
        ) as alice,
        squall.Executor(
            cluster.address, auth=str(keys["bob"]), key="bob", connect_timeout=15
        ) as bob,
    ):
        wait_for(lambda: bob.stats()["workers"] == 2, 20, "both workers registered")
        pids = {name: {p.pid for p in node.descendants()} for name, node in nodes.items()}
        ran_on = {f.result(timeout=30) for f in [alice.submit(os.getpid) for _ in range(200)]}
        assert ran_on <= pids["node2"], "a task of alice's ran outside her worker group"
        anywhere = {f.result(timeout=30) for f in [bob.submit(os.getpid) for _ in range(400)]}
        assert anywhere & pids["node1"]  # bob asked for no group: any listed worker
        with pytest.raises(squall.SquallError, match="no worker group 'gpu'"):
            squall.Executor(
                cluster.address,
                auth=str(keys["alice"]),
                key="alice",
                worker_group="gpu",
                connect_timeout=10,
            )


def test_worker_groups_need_keys(cluster: Cluster) -> None:
    cluster.start_router()
    with pytest.raises(squall.SquallError, match="worker groups need a router with --auth"):
        squall.Executor(cluster.address, worker_group="trusted", connect_timeout=10)
