"""The router forwards without unpickling, and bad input never takes it down."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import zmq

from conftest import wait_for
from squall import protocol
from squall.protocol import ErrorCode, MsgType, Role

pytestmark = pytest.mark.timeout(90)


def _leave_marker(directory: str) -> str:
    Path(directory, str(os.getpid())).touch()
    return directory


class Marker:
    """Unpickling one leaves a file named after the PID of the process that did it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __reduce__(self) -> tuple[object, ...]:
        return _leave_marker, (self.directory,)


def echo_with_marker(directory: str, marker: object) -> Marker:
    return Marker(directory)


def test_router_never_unpickles(cluster, tmp_path: Path) -> None:
    router = cluster.start_router()
    cluster.start_workers(processes=2, concurrency=20)
    worker_pids = set(cluster.stats()["worker_pids"])
    with cluster.executor() as ex:
        futures = [
            ex.submit(echo_with_marker, str(tmp_path), Marker(str(tmp_path))) for _ in range(50)
        ]
        for future in futures:
            future.result(timeout=30)
    unpicklers = {int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()}
    assert router.pid not in unpicklers
    assert unpicklers & worker_pids, "arguments were unpickled on workers"
    assert unpicklers <= worker_pids | {os.getpid()}, "results are unpickled only by the client"


def _raw_dealer(ctx: zmq.Context, address: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, protocol.new_peer_id())  # as squall's own peers do
    sock.connect(address)
    return sock


def _reply(sock: zmq.Socket, timeout: float = 5.0) -> tuple[MsgType, bytes]:
    assert sock.poll(timeout * 1000), "router did not answer"
    return protocol.parse_header(sock.recv_multipart())


SUBMIT = protocol.SubmitItem(1, b"h" * 16, 0, 0, (), [b"x"])
GARBAGE = [
    [b"\x00\x01random bytes"],
    [b""],
    [b"SQ"],  # too short
    [b"SQ\x01\xee"],  # unknown type
    [protocol.encode_submit([SUBMIT])[0]],  # the item owns a frame that is missing
    [protocol.encode_submit([SUBMIT])[0][:-3], b"x"],  # truncated header
    protocol.encode_submit([SUBMIT._replace(deps=(1, 2))])[:1] + [b"\0" * 15, b"x"],  # bad deps
    [protocol.encode_hello(Role.CLIENT, 1)[0][:4] + b"\x09\x00\x00\x00\x01\x00\x00\x00\x00"],
    protocol.encode_result([(1, 0, [b"x"])]),  # results from a peer that is no worker
    protocol.encode_task([protocol.TaskItem(1, b"h" * 16, 0, 0, 0, [], [])]),  # router-to-worker
    protocol.encode_ack([(1, 2)]) + [b"stray"],
    [protocol.encode_cancel([1])[0] + b"\1"],
]


def test_garbage_is_answered_and_the_router_keeps_serving(cluster) -> None:
    router = cluster.start_router()
    cluster.start_workers(processes=1, concurrency=20)
    with zmq.Context() as ctx, _raw_dealer(ctx, cluster.address) as sock:
        for frames in GARBAGE:
            sock.send_multipart(frames)
            type_, body = _reply(sock)
            assert type_ is MsgType.ERROR, frames
        # Another protocol version gets an explicit VERSION error it can read.
        sock.send_multipart([b"SQ\x63\x01"])
        type_, body = _reply(sock)
        code, reason = protocol.decode_error(body)
        assert type_ is MsgType.ERROR and code == ErrorCode.VERSION and "version 99" in reason
        rng = random.Random(7)
        for _ in range(500):
            frames = [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 5))]
            sock.send_multipart(frames)
    with cluster.executor() as ex:
        assert list(ex.map(abs, range(-50, 0))) == list(range(50, 0, -1))
    assert router.popen.poll() is None
    assert cluster.stats()["protocol_errors"] >= len(GARBAGE) + 1


def test_tasks_of_a_silent_worker_are_redelivered(cluster) -> None:
    """A 'worker' that registers, takes tasks and goes silent loses them to a live worker."""
    cluster.start_router()
    with zmq.Context() as ctx, _raw_dealer(ctx, cluster.address) as fake:
        fake.send_multipart(protocol.encode_hello(Role.WORKER, 4242, 1000))
        assert _reply(fake)[0] is MsgType.WELCOME
        with cluster.executor() as ex:
            futures = [ex.submit(abs, -i) for i in range(100)]
            # The fake worker got the tasks...
            deadline = time.monotonic() + 10
            got = 0
            while got < 100 and time.monotonic() < deadline:
                if fake.poll(200):
                    type_, body = protocol.parse_header(frames := fake.recv_multipart())
                    if type_ is MsgType.TASK:
                        got += len(protocol.decode_task(body, frames[1:]))
            assert got == 100
            # ...went silent past the liveness window (1 s here) and was declared dead...
            wait_for(lambda: cluster.stats()["workers"] == 0, 10, "fake worker declared dead")
            # ...so a real worker that joins gets its tasks.
            cluster.start_workers(processes=1, concurrency=100)
            assert [f.result(timeout=30) for f in futures] == list(range(100))
        assert cluster.stats()["redelivered"] >= 100


def test_the_router_process_cannot_unpickle_at_all(cluster) -> None:
    """The router disables every pickle loader at start, so the whole suite runs through
    routers that could not unpickle a payload even by mistake."""
    import subprocess
    import sys

    code = (
        "import pickle; from squall.router.server import forbid_unpickling; "
        "forbid_unpickling(); pickle.loads(pickle.dumps(1))"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert ran.returncode != 0 and "never unpickles" in ran.stderr
    router = cluster.start_router()
    assert "unpickling=disabled" in router.output()
