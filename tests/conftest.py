"""Fixtures that start real squall processes on loopback and stop them by PID.

Every process a test starts is a :class:`Proc`: its output goes to a log file that is printed if
the test fails, and it is stopped with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

import squall
from squall import protocol
from squall.auth import keygen

# Short liveness settings keep failure-detection tests quick; production defaults are 1 s / 3 s.
FAST_ENV = {"SQUALL_HEARTBEAT": "0.2", "SQUALL_LIVENESS": "1.0", "SQUALL_LOG_LEVEL": "info"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A squall subprocess with its log, stopped by PID."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        umask: int = -1,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        full_env = {**os.environ, **FAST_ENV, **(env or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "squall", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            umask=umask,
        )
        self.pid = self.popen.pid

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


class Cluster:
    """Processes started for one test, and helpers to talk to them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self.address = ""
        self.router: Proc | None = None

    def start(self, *args: str, env: dict[str, str] | None = None, umask: int = -1) -> Proc:
        """Start ``python -m squall ARGS``; ``umask`` for the child (-1: this process's)."""
        proc = Proc(list(args), self.tmp_path / f"{args[0]}-{len(self.procs)}.log", env, umask)
        self.procs.append(proc)
        return proc

    def start_router(self, *extra: str) -> Proc:
        """A router on a random loopback port; ``--insecure`` unless ``extra`` has ``--auth``."""
        self.address = f"tcp://127.0.0.1:{free_port()}"
        insecure = () if "--auth" in extra else ("--insecure",)
        self.router = self.start("router", "--bind", self.address, *insecure, *extra)
        wait_for(
            lambda: router_stats(self.address, timeout=0.5) is not None, 15, "router did not answer"
        )
        return self.router

    def start_workers(
        self,
        processes: int = 1,
        concurrency: int = 100,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> Proc:
        before = self.stats()["workers"]
        node = self.start(
            "worker",
            "--connect",
            self.address,
            "--processes",
            str(processes),
            "--concurrency",
            str(concurrency),
            *extra,
            env=env,
        )
        wait_for(
            lambda: self.stats()["workers"] >= before + processes, 30, "workers did not register"
        )
        return node

    def start_keyed_router(self, keys: dict[str, Path]) -> Proc:
        """A router with ``--auth`` (see :func:`make_keys`) on a random loopback port."""
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.router = self.start("router", "--bind", self.address, "--auth", str(keys["router"]))
        return self.router

    def start_keyed_worker(self, keys: dict[str, Path], name: str, processes: int = 1) -> Proc:
        """A worker node holding the key pair ``name`` (does not wait for it to register)."""
        return self.start(
            "worker",
            "--connect",
            self.address,
            "--processes",
            str(processes),
            "--auth",
            str(keys[name]),
            "--key",
            name,
        )

    def stats(self) -> dict[str, Any]:
        stats = router_stats(self.address)
        assert stats is not None, "router did not answer"
        return stats

    def executor(self) -> squall.Executor:
        return squall.Executor(self.address, connect_timeout=10)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s: {what}")


def router_stats(address: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """Ask a router for its counters over a throwaway DEALER; None if it does not answer."""
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        sock.send_multipart(protocol.encode_stats_request())
        if not sock.poll(timeout * 1000):
            return None
        frames = sock.recv_multipart()
        type_, body = protocol.parse_header(frames)
        assert type_ is protocol.MsgType.STATS
        return protocol.decode_stats(body)


def make_keys(root: Path) -> dict[str, Path]:
    """A router auth dir, and one key dir per peer (router.key + its own pair): alice and bob
    are listed clients, node1 and node2 listed workers, mallory is not listed at all."""
    server = root / "router"
    keygen(server, "router")
    dirs = {"router": server}
    for name, role in (
        ("alice", "clients"),
        ("bob", "clients"),
        ("node1", "workers"),
        ("node2", "workers"),
        ("mallory", None),
    ):
        own = root / name
        public, _ = keygen(own, name)
        shutil.copy(server / "router.key", own / "router.key")
        if role is not None:
            (server / role).mkdir(exist_ok=True)
            shutil.copy(public, server / role / public.name)
        dirs[name] = own
    return dirs


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Start nothing yet; stop (by PID) whatever the test started, dump logs on failure."""
    c = Cluster(tmp_path)
    yield c
    c.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in c.procs:
            sys.stderr.write(f"\n----- {' '.join(proc.args)} (pid {proc.pid}) -----\n")
            sys.stderr.write(proc.output()[-5000:])


@pytest.fixture
def remote(cluster: Cluster) -> Iterator[squall.Executor]:
    """A router, a node of 2 worker processes, and an Executor connected over TCP."""
    cluster.start_router()
    cluster.start_workers(processes=2, concurrency=200)
    with cluster.executor() as ex:
        yield ex


@pytest.fixture
def secured(
    cluster: Cluster, tmp_path: Path
) -> Iterator[tuple[Cluster, dict[str, Path], squall.Executor]]:
    """A router with --auth, a worker node with node1's key, and alice's executor."""
    keys = make_keys(tmp_path / "keys")
    cluster.start_keyed_router(keys)
    cluster.start_keyed_worker(keys, "node1")
    with squall.Executor(
        cluster.address, auth=str(keys["alice"]), key="alice", connect_timeout=15
    ) as alice:
        wait_for(lambda: alice.stats()["workers"] == 1, 20, "worker registered")
        yield cluster, keys, alice


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
