"""squall side by side with Celery, Dramatiq, Dask, Ray and IPython Parallel, on one machine.

``throughput.py`` tracks squall's own figures against fixed targets. This script answers a
different question: how squall compares with the task runners people already use, and with bare
ZeroMQ, the floor that any runner built on ZeroMQ stands on. Everything runs on the same machine,
in the same run, with the same number of worker processes.

Workloads (``--quick`` sizes in brackets):

a. **no-op throughput**: 20,000 [500] tasks that return their argument, end to end, in each
   system's idiomatic bulk call (``map``, ``group``, ``client.map`` ...).
b. **I/O-bound**: 10,000 [200] tasks that sleep 100 ms. A gevent-patched ``time.sleep`` on
   squall, Celery ``-P gevent`` and ``dramatiq-gevent``; async actors with ``asyncio.sleep`` on Ray.
   On a system that runs one task per thread or process, 10,000 sleeps would take minutes. There
   it runs 10 waves (10 x its concurrency) and the wall time is scaled to 10,000 tasks, marked ≈.
c. **round-trip latency**: 1,000 [50] sequential single-task calls, p50 and p99.
d. **10 MB NumPy array** passed as the argument and returned: the median of 5 [2] round trips
   ([1 MB]).
e. **streaming**: 100,000 [2,000] small ints yielded by a remote generator, consumed as they
   come. "not supported" where the system has no generator streaming.
f. **squall scale**: no-op cost per task for 1k, 10k, 100k and 1M [100, 1k, 10k] tasks. This
   shows whether the cost per task stays flat as the queue grows.

References: a bare pyzmq client DEALER -> Python ROUTER/ROUTER broker -> DEALER echo processes,
and the same with ``zmq.proxy`` (the C loop) as the broker. Both run (a), (c) and (d), so
squall's overhead over the wire reads as a ratio.

How a run is organised, and why:

* The parent never imports a task system. It starts one child process per system
  (``compare.py --child SYSTEM``) in its own session. gevent patching, Ray's global state and
  Dask's event loop must not meet in one interpreter. The child starts the system, measures the
  workloads and reports JSON lines over a pipe.
* Every workload has a deadline. If a child misses it, the parent kills the child and all its
  descendants by PID (TERM, then KILL) and records the workload as "timed out". A fresh child
  then runs the remaining workloads. The parent makes itself a child subreaper (Linux), so
  processes that a system daemonises are reparented to it and still get stopped.
* Each figure is one warm-up (a tenth of the size, at most 1,000 tasks; one wave of sleeps;
  100 latency calls; one array trip), then ``--runs`` measured runs, shown as median (min-max).
  A ratio divides squall's median by the other system's median from the same run.
* Idle RSS is read once per system: after start-up and a small warm-up, with nothing running.
  The figure is the median over worker processes, plus the sum over every process the system
  started (brokers, schedulers, nannies and Redis included; the Dask scheduler lives in the
  client process and is not counted).

Usage::

    python benchmarks/compare.py                          # all systems, ~15 min on 2 cores
    python benchmarks/compare.py --systems squall,dask --runs 5
    python benchmarks/compare.py --systems squall --quick # smoke run, a few seconds

Writes ``results.md``, ``results.png``, ``results.json`` and ``logs/`` (each child's output) to
``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import functools
import gc
import json
import logging
import math
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem  # workers import this file by this name (Celery, Dramatiq)

IO_SLEEP = 0.1
#: idle worker RSS squall aims to stay under (#14)
RSS_TARGET_MB = 30
#: greenlets (or async slots) per worker process wherever the system has them; squall's default
GREEN_CONCURRENCY = 1000
#: dramatiq's default --threads
DRAMATIQ_THREADS = 8
#: on a system that runs few sleeps at once, the I/O workload runs this many waves, not 10,000
IO_WAVES = 10
REDIS_URL_ENV = "COMPARE_REDIS_URL"
#: seconds a child gets to start its system, and to stop it after the last workload
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
STOP_GRACE = 5.0
#: zmq references: messages in flight at once in the throughput figure
ZMQ_WINDOW = 1000

WORKLOADS = ("noop", "io", "latency", "array", "stream", "scale")


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does."""

    noop: int
    io: int
    latency: int
    latency_warmup: int
    array_bytes: int
    array_trips: int
    stream: int
    scale: tuple[int, ...]


FULL = Sizes(
    noop=20_000,
    io=10_000,
    latency=1_000,
    latency_warmup=100,
    array_bytes=10 * 2**20,
    array_trips=5,
    stream=100_000,
    scale=(1_000, 10_000, 100_000, 1_000_000),
)
QUICK = Sizes(
    noop=500,
    io=200,
    latency=50,
    latency_warmup=10,
    array_bytes=2**20,
    array_trips=2,
    stream=2_000,
    scale=(100, 1_000, 10_000),
)


def timeout_for(workload: str, runs: int) -> float:
    """Seconds one workload may take, warm-up included. They are generous: a timeout should
    only catch a hang, not a slow system. The slowest system measured (ipyparallel, ~500 no-op
    tasks/s) needs ~40 s per no-op run."""
    per_run = {
        "noop": 75.0,
        "io": 40.0,
        "latency": 30.0,
        "array": 30.0,
        "stream": 60.0,
        "scale": 120.0,
    }
    return 60.0 + per_run[workload] * (runs + 1)


# -- the tasks ------------------------------------------------------------------------------
# Module-level functions. The child runs this file as __main__, so squall, Dask, Ray and
# ipyparallel send them by value (cloudpickle), as they would send a user's own functions.
# Celery and Dramatiq workers import this file as a module and look the tasks up by name.


def echo(x: Any) -> Any:
    """The no-op task: returns its argument."""
    return x


def sleep_echo(x: Any) -> Any:
    """The I/O-bound task. ``time.sleep`` is cooperative where the worker patched it (gevent)."""
    time.sleep(IO_SLEEP)
    return x


def count_up(n: int) -> Iterator[int]:
    """The streaming task: yields 0 .. n-1.

    A plain loop, not ``yield from range(n)``: Ray drives generators with ``send()``, which a
    range iterator lacks.
    """
    for i in range(n):  # noqa: UP028
        yield i


class AsyncSleeper:
    """The I/O-bound task on Ray: an async actor. Ray's tasks take a CPU slot each, so Ray
    runs sleeps concurrently through async actors instead."""

    async def sleep_echo(self, x: Any) -> Any:
        await asyncio.sleep(IO_SLEEP)
        return x


def _build_celery_app() -> Any:
    """The Celery app, shared by the client (the child) and ``celery -A compare:celery_app``.

    Pickle rather than Celery's default JSON, because the 10 MB workload sends a NumPy array.
    It is also the fastest serializer Celery has, so no system is held back by its encoding.
    """
    from celery import Celery

    url = os.environ[REDIS_URL_ENV]
    app = Celery(MODULE, broker=url, backend=url)
    app.conf.update(
        task_serializer="pickle",
        result_serializer="pickle",
        accept_content=["pickle"],
        result_accept_content=["pickle"],
        result_expires=300,  # 10 MB results would otherwise pile up in Redis for a day
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    for fn in (echo, sleep_echo):
        app.task(name=f"{MODULE}.{fn.__name__}")(fn)
    return app


_celery_app: Any = None


def __getattr__(name: str) -> Any:
    """``celery -A compare:celery_app`` in the workers. The app is built on first access, so
    importing this module costs nothing on systems that don't use Celery (PEP 562)."""
    global _celery_app
    if name == "celery_app":
        if _celery_app is None:
            _celery_app = _build_celery_app()
        return _celery_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_dramatiq_actors: dict[str, Any] = {}


def dramatiq_setup() -> dict[str, Any]:
    """``dramatiq compare:dramatiq_setup`` in the workers, and the same call in the client:
    a Redis broker with the Results middleware, the pickle encoder (for the NumPy array) and
    the two actors. Retries are off: a failure should show, not be retried. The rest is
    Dramatiq's defaults, including its idle consumer's polling back-off."""
    if _dramatiq_actors:
        return _dramatiq_actors
    import dramatiq
    import redis
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    url = os.environ[REDIS_URL_ENV]
    encoder = dramatiq.PickleEncoder()
    dramatiq.set_encoder(encoder)

    def client() -> Any:
        # Two changes from redis-py 8's defaults, without which Dramatiq fails here. The 5 s
        # socket timeout cuts off the backend's blocking wait for a result (BRPOPLPUSH) on
        # anything slower. The pool raises at 100 connections, which 1,000 greenlets acking
        # and storing results at once exceed; a blocking pool makes them wait instead.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=100, timeout=None, socket_timeout=None
        )
        return redis.Redis(connection_pool=pool)

    broker = RedisBroker(client=client())
    broker.add_middleware(Results(backend=RedisBackend(client=client(), encoder=encoder)))
    dramatiq.set_broker(broker)
    for fn in (echo, sleep_echo):
        _dramatiq_actors[fn.__name__] = dramatiq.actor(
            actor_name=f"{MODULE}.{fn.__name__}", store_results=True, max_retries=0
        )(fn)
    return _dramatiq_actors


# -- processes ------------------------------------------------------------------------------


def stop_processes(procs: Iterable[Any], grace: float = STOP_GRACE) -> None:
    """Stop ``psutil.Process`` objects by PID: TERM, then KILL whatever outlives ``grace``.

    psutil checks each process's start time before it sends a signal, so a reused PID is safe.
    """
    import psutil

    live = [p for p in procs if p.is_running()]
    for proc in live:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(live, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


def stop_descendants() -> None:
    """Stop every process below this one, by PID."""
    import psutil

    stop_processes(psutil.Process().children(recursive=True))


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``), so processes a system
    daemonises are still found, and stopped, below this process."""
    if sys.platform != "linux":
        return
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def free_port() -> int:
    """A free TCP port on the loopback interface. Another process could take it before Redis
    binds it, but on a benchmark machine that race is harmless."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _popen(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a system process in this file's directory. Its output goes to the child's own
    output, which is the system's log file."""
    return subprocess.Popen(cmd, cwd=HERE, env=env, stdout=sys.stderr, stderr=sys.stderr)


class RedisServer:
    """A private redis-server on a free loopback port, stopped by PID.

    Without persistence: this Redis carries messages for one benchmark run and nothing else.
    """

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Skipped("redis-server not found (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = _popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ]
        )
        deadline = time.monotonic() + 10
        while not self._pong():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit code {self.proc.poll()})")
            time.sleep(0.05)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        import psutil

        stop_processes([psutil.Process(self.proc.pid)])


# -- the systems ----------------------------------------------------------------------------


class Skipped(Exception):
    """The system cannot run here (not installed, no redis-server); its row says why."""


class NotSupported(Exception):
    """The system has no way to run this workload."""


def _require(*modules: str) -> None:
    """Raise ``Skipped`` unless every module imports."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise Skipped(f"{module} not installed ({exc})") from exc


def _expect_range(results: Iterable[Any], n: int) -> None:
    """Check that ``results`` is exactly 0 .. n-1 in order, without holding another list."""
    count = 0
    for count, value in enumerate(results, 1):
        if value != count - 1:
            raise RuntimeError(f"result {count - 1} came back as {value!r}")
    if count != n:
        raise RuntimeError(f"{count:,} of {n:,} results came back")


class System:
    """One task system as the workloads drive it. Subclasses start it, run the calls and stop
    it; the workload functions do the timing, so every system is timed by the same code."""

    #: how the system is set up, for the table
    setup = ""
    #: how many sleeps it runs at once (sizes the I/O workload)
    io_concurrency = 1

    def __init__(self, processes: int) -> None:
        self.processes = processes

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the system's processes, by PID. Subclasses first stop it their own way."""
        stop_descendants()

    def worker_pids(self) -> list[int]:
        """The processes that run tasks."""
        raise NotImplementedError

    def noop(self, n: int) -> None:
        """Run ``echo`` over range(n) and check the results."""
        raise NotImplementedError

    def sleep(self, n: int) -> None:
        """Run ``sleep_echo`` over range(n) and check the results."""
        raise NotImplementedError

    def call(self, x: Any) -> Any:
        """One ``echo(x)``, waiting for its result."""
        raise NotImplementedError

    def stream(self, n: int) -> None:
        """Consume ``count_up(n)`` as it is yielded, checking each item."""
        raise NotSupported("not supported")


class SquallSystem(System):
    """squall's embedded default: a private router and a worker node as subprocesses."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes)
        self.setup = f"`squall.Executor(processes={processes})`: {processes} × 1,000 greenlets"
        self.io_concurrency = processes * GREEN_CONCURRENCY

    def start(self) -> None:
        import structlog

        import squall

        # squall's client logs through structlog; the child's stdout is the log file anyway,
        # but stderr keeps the order with the other processes' output.
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
        self.ex = squall.Executor(processes=self.processes, concurrency=GREEN_CONCURRENCY)

    def stop(self) -> None:
        self.ex.shutdown()
        super().stop()

    def worker_pids(self) -> list[int]:
        return list(self.ex.stats()["worker_pids"])

    def noop(self, n: int) -> None:
        _expect_range(self.ex.map(echo, range(n)), n)

    def sleep(self, n: int) -> None:
        _expect_range(self.ex.map(sleep_echo, range(n)), n)

    def call(self, x: Any) -> Any:
        return self.ex.submit(echo, x).result()

    def stream(self, n: int) -> None:
        _expect_range(self.ex.stream(count_up, n), n)


class CelerySystem(System):
    """Celery with Redis as broker and result backend.

    The gevent pool runs one ``celery worker -P gevent -c 1000`` per process (a gevent pool is a
    single process). The prefork pool runs one ``celery worker -P prefork -c N``: N pool
    processes under Celery's main process.
    """

    def __init__(self, processes: int, pool: str) -> None:
        super().__init__(processes)
        _require("celery", "redis")
        self.pool = pool
        if pool == "gevent":
            self.nodes, self.concurrency = processes, GREEN_CONCURRENCY
            self.setup = f"{processes} × `celery worker -P gevent -c {GREEN_CONCURRENCY}`, Redis"
        else:
            self.nodes, self.concurrency = 1, processes
            self.setup = f"`celery worker -P prefork -c {processes}`, Redis"
        self.io_concurrency = self.nodes * self.concurrency

    def start(self) -> None:
        self.redis = RedisServer()
        os.environ[REDIS_URL_ENV] = self.redis.url
        self.app = _build_celery_app()
        env = dict(os.environ)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Celery refuses to run a worker as root that accepts pickle; benchmark containers
            # run as root, and only this loopback Redis can reach the worker.
            env["C_FORCE_ROOT"] = "1"
        self.workers = [
            _popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    f"{MODULE}:celery_app",
                    "worker",
                    "-P",
                    self.pool,
                    "-c",
                    str(self.concurrency),
                    "-n",
                    f"{self.pool}{i}@%h",
                    "--loglevel",
                    "WARNING",
                ],
                env,
            )
            for i in range(self.nodes)
        ]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len(self.app.control.ping(timeout=0.5)) < self.nodes:
            if any(w.poll() is not None for w in self.workers) or time.monotonic() > deadline:
                raise RuntimeError("celery workers did not come up")
        self.echo = self.app.tasks[f"{MODULE}.echo"]
        self.sleep_echo = self.app.tasks[f"{MODULE}.sleep_echo"]

    def stop(self) -> None:
        import psutil

        # TERM is Celery's warm shutdown; the workers are idle, so it is quick.
        stop_processes([psutil.Process(w.pid) for w in self.workers], grace=10)
        self.redis.stop()
        super().stop()

    def worker_pids(self) -> list[int]:
        import psutil

        if self.pool == "gevent":
            return [w.pid for w in self.workers]
        return [c.pid for c in psutil.Process(self.workers[0].pid).children()]

    def _group(self, task: Any, n: int) -> None:
        from celery import group

        # A group's result joins natively on Redis: one subscription, not one poll per task.
        _expect_range(group(task.s(i) for i in range(n)).apply_async().get(), n)

    def noop(self, n: int) -> None:
        self._group(self.echo, n)

    def sleep(self, n: int) -> None:
        self._group(self.sleep_echo, n)

    def call(self, x: Any) -> Any:
        return self.echo.delay(x).get()


class DramatiqSystem(System):
    """Dramatiq with Redis as broker and its Results middleware (Redis) for return values.

    ``dramatiq`` runs threads (8 per process by default); ``dramatiq-gevent`` patches first
    and runs greenlets, here 1,000 per process as squall and Celery's gevent pool do.
    """

    def __init__(self, processes: int, gevent: bool) -> None:
        super().__init__(processes)
        _require("dramatiq", "redis")
        self.gevent = gevent
        self.threads = GREEN_CONCURRENCY if gevent else DRAMATIQ_THREADS
        command = "dramatiq-gevent" if gevent else "dramatiq"
        self.setup = f"`{command} -p {processes} -t {self.threads}`, Redis, Results"
        self.io_concurrency = processes * self.threads

    def start(self) -> None:
        self.redis = RedisServer()
        os.environ[REDIS_URL_ENV] = self.redis.url
        actors = dramatiq_setup()
        self.echo, self.sleep_echo = actors["echo"], actors["sleep_echo"]
        if self.gevent:
            # dramatiq-gevent is a script (it patches before importing dramatiq), not a module
            program = [sys.executable, str(Path(sys.executable).parent / "dramatiq-gevent")]
        else:
            program = [sys.executable, "-m", "dramatiq"]
        self.main = _popen(
            [
                *program,
                f"{MODULE}:dramatiq_setup",
                "--processes",
                str(self.processes),
                "--threads",
                str(self.threads),
                "--path",
                str(HERE),
            ]
        )
        # No ping in Dramatiq: the first result says a worker is consuming.
        self.call(0)

    def stop(self) -> None:
        import psutil

        stop_processes([psutil.Process(self.main.pid)], grace=10)
        self.redis.stop()
        super().stop()

    def worker_pids(self) -> list[int]:
        import psutil

        return [c.pid for c in psutil.Process(self.main.pid).children()]

    def _run(self, actor: Any, n: int) -> None:
        messages = [actor.send(i) for i in range(n)]
        _expect_range((m.get_result(block=True, timeout=3_600_000) for m in messages), n)

    def noop(self, n: int) -> None:
        self._run(self.echo, n)

    def sleep(self, n: int) -> None:
        self._run(self.sleep_echo, n)

    def call(self, x: Any) -> Any:
        return self.echo.send(x).get_result(block=True, timeout=3_600_000)


class DaskSystem(System):
    """Dask distributed: a ``LocalCluster`` of worker processes (threads per worker left at
    Dask's default), ``client.map`` + ``gather``."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes)
        _require("distributed")

    def start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=self.processes,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(self.processes)
        threads = sum(self.client.nthreads().values())
        self.io_concurrency = threads
        self.setup = (
            f"`LocalCluster(n_workers={self.processes})`: {self.processes} processes, "
            f"{threads // self.processes} thread each"
        )

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()
        super().stop()

    def worker_pids(self) -> list[int]:
        return list(self.client.run(os.getpid).values())

    def _map(self, fn: Callable[[Any], Any], n: int) -> None:
        # pure=False: the same argument twice is two tasks, as on every other system
        futures = self.client.map(fn, range(n), pure=False)
        _expect_range(self.client.gather(futures), n)

    def noop(self, n: int) -> None:
        self._map(echo, n)

    def sleep(self, n: int) -> None:
        self._map(sleep_echo, n)

    def call(self, x: Any) -> Any:
        return self.client.submit(echo, x, pure=False).result()


class RaySystem(System):
    """Ray on this machine (``ray.init``) with as many CPUs as worker processes. Tasks run
    everything except the I/O workload, which runs on async actors (one per process)."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes)
        _require("ray")
        self.setup = (
            f"`ray.init(num_cpus={processes})`: {processes} task workers; "
            f"I/O on {processes} async actors × {GREEN_CONCURRENCY:,}"
        )
        self.io_concurrency = processes * GREEN_CONCURRENCY
        self.sleepers: list[Any] = []

    def start(self) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a benchmark
        import ray

        ray.init(
            num_cpus=self.processes,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        # Any: Ray's annotations reject options on remote() and generator tasks, both of
        # which work (and are documented)
        self.ray: Any = ray
        self.echo = self.ray.remote(echo)
        self.count_up = self.ray.remote(count_up)

    def stop(self) -> None:
        self.ray.shutdown()
        super().stop()

    def worker_pids(self) -> list[int]:
        import psutil

        # Ray names its worker processes "ray::IDLE" (or "ray::<task>"); its agents are
        # "ray::...Agent".
        pids = []
        for proc in psutil.Process().children(recursive=True):
            try:
                title = proc.cmdline()[0] if proc.cmdline() else ""
            except psutil.Error:
                continue
            if title.startswith("ray::") and not title.endswith("Agent"):
                pids.append(proc.pid)
        return pids

    def noop(self, n: int) -> None:
        _expect_range(self.ray.get([self.echo.remote(i) for i in range(n)]), n)

    def sleep(self, n: int) -> None:
        if not self.sleepers:
            actor = self.ray.remote(max_concurrency=GREEN_CONCURRENCY)(AsyncSleeper)
            self.sleepers = [actor.remote() for _ in range(self.processes)]
        width = len(self.sleepers)
        refs = [self.sleepers[i % width].sleep_echo.remote(i) for i in range(n)]
        _expect_range(self.ray.get(refs), n)

    def call(self, x: Any) -> Any:
        return self.ray.get(self.echo.remote(x))

    def stream(self, n: int) -> None:
        # A generator task returns an ObjectRefGenerator: one object ref per yielded item
        _expect_range((self.ray.get(ref) for ref in self.count_up.remote(n)), n)


class IpyparallelSystem(System):
    """IPython Parallel: a controller and one engine per process, a load-balanced view (one
    task per call, as ``chunksize=1``)."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes)
        _require("ipyparallel")
        self.setup = f"`ipp.Cluster(n={processes})`, load-balanced view"
        self.io_concurrency = processes

    def start(self) -> None:
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(n=self.processes, log_level=logging.WARNING)
        self.rc = self.cluster.start_and_connect_sync(activate=False)
        # cloudpickle, so that functions from __main__ carry their globals (time, IO_SLEEP)
        self.rc[:].use_cloudpickle()
        self.view = self.rc.load_balanced_view()

    def stop(self) -> None:
        self.rc.close()
        self.cluster.stop_cluster_sync()
        super().stop()

    def worker_pids(self) -> list[int]:
        return list(self.rc[:].apply_sync(os.getpid))

    def noop(self, n: int) -> None:
        _expect_range(self.view.map_sync(echo, range(n)), n)

    def sleep(self, n: int) -> None:
        _expect_range(self.view.map_sync(sleep_echo, range(n)), n)

    def call(self, x: Any) -> Any:
        return self.view.apply_sync(echo, x)


class ZmqEcho(System):
    """The floor: a pyzmq DEALER client, a broker, and DEALER echo processes, over ipc:// as
    squall's embedded default. The broker is either a Python ROUTER/ROUTER loop (the shape of
    squall's router, without its scheduling) or ``zmq.proxy`` (ROUTER/DEALER, the C loop).

    It echoes bytes: the payload is the pickled argument, so (a) and (c) carry what squall
    carries, minus the call and its function."""

    PROBE = b"?"

    def __init__(self, processes: int, proxy: bool) -> None:
        super().__init__(processes)
        self.proxy = proxy
        broker = "`zmq.proxy` (C) ROUTER/DEALER" if proxy else "Python ROUTER/ROUTER broker"
        self.setup = f"{broker}, {processes} DEALER echo processes"

    def start(self) -> None:
        import zmq

        self.directory = tempfile.mkdtemp(prefix="compare-zmq-")
        front = f"ipc://{self.directory}/front"
        back = f"ipc://{self.directory}/back"
        me = [sys.executable, str(Path(__file__).resolve()), "--zmq-role"]
        role = "proxy" if self.proxy else "broker"
        self.procs = [_popen([*me, role, front, back])]
        self.procs += [_popen([*me, "worker", back]) for _ in range(self.processes)]
        self.ctx = _zmq_context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(front)
        self.pids = self._probe_workers()

    def _probe_workers(self) -> list[int]:
        """Ask until every echo process has answered with its PID: then all are connected."""
        import zmq

        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while len(seen) < self.processes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(seen)} of {self.processes} echo processes answered")
            self.sock.send(self.PROBE)
            if self.sock.poll(1000, zmq.POLLIN):
                seen.add(int(self.sock.recv()))
        while self.sock.poll(200, zmq.POLLIN):  # late answers to earlier probes
            self.sock.recv()
        return sorted(seen)

    def stop(self) -> None:
        import psutil

        self.sock.close(linger=0)
        self.ctx.term()
        stop_processes([psutil.Process(p.pid) for p in self.procs])
        shutil.rmtree(self.directory, ignore_errors=True)
        super().stop()

    def worker_pids(self) -> list[int]:
        return self.pids

    def noop(self, n: int) -> None:
        import pickle

        # Pipelined through a window: unbounded, the queues would hit their high-water marks
        # and the ROUTERs would drop.
        # Two echo processes answer out of order: check that each value came back once.
        seen = bytearray(n)
        sent = received = 0
        while received < n:
            while sent < n and sent - received < ZMQ_WINDOW:
                self.sock.send(pickle.dumps(sent))
                sent += 1
            seen[pickle.loads(self.sock.recv())] += 1
            received += 1
        if seen.count(1) != n:
            raise RuntimeError("echoes came back lost or doubled")

    def call(self, x: Any) -> Any:
        import pickle

        import numpy as np

        if isinstance(x, np.ndarray):  # raw buffer, no copy: the physical floor
            self.sock.send(x.data, copy=False)
            frame = self.sock.recv(copy=False)
            return np.frombuffer(frame.buffer, dtype=x.dtype)
        self.sock.send(pickle.dumps(x))
        return pickle.loads(self.sock.recv())

    def sleep(self, n: int) -> None:
        raise NotSupported("n/a")

    def stream(self, n: int) -> None:
        raise NotSupported("n/a")


SYSTEMS: dict[str, Callable[[int], System]] = {
    "squall": SquallSystem,
    "celery-gevent": lambda p: CelerySystem(p, "gevent"),
    "celery-prefork": lambda p: CelerySystem(p, "prefork"),
    "dramatiq": lambda p: DramatiqSystem(p, gevent=False),
    "dramatiq-gevent": lambda p: DramatiqSystem(p, gevent=True),
    "dask": DaskSystem,
    "ray": RaySystem,
    "ipyparallel": IpyparallelSystem,
    "zmq-python": lambda p: ZmqEcho(p, proxy=False),
    "zmq-proxy": lambda p: ZmqEcho(p, proxy=True),
}
REFERENCES = ("zmq-python", "zmq-proxy")
#: the packages whose versions the results name, per system
PACKAGES = {
    "squall": ("squall", "pyzmq", "gevent"),
    "celery-gevent": ("celery", "kombu", "redis"),
    "celery-prefork": ("celery", "kombu", "redis"),
    "dramatiq": ("dramatiq", "redis"),
    "dramatiq-gevent": ("dramatiq", "redis", "gevent"),
    "dask": ("dask", "distributed"),
    "ray": ("ray",),
    "ipyparallel": ("ipyparallel",),
    "zmq-python": ("pyzmq",),
    "zmq-proxy": ("pyzmq",),
}


def workloads_of(name: str) -> list[str]:
    """The workloads a system is measured on: scale is squall's alone; the echo references
    measure what the wire costs, which needs no sleeps and no streams."""
    if name == "squall":
        return list(WORKLOADS)
    if name in REFERENCES:
        return ["noop", "latency", "array"]
    return [w for w in WORKLOADS if w != "scale"]


# -- the zmq reference processes ------------------------------------------------------------


def _zmq_context() -> Any:
    """A context whose sockets have no high-water marks. The client's window bounds what is in
    flight. With the default marks, a ROUTER drops replies silently under pipelining even
    below 1,000 in flight: a writer sees its reader's progress only every half mark."""
    import zmq

    ctx = zmq.Context()
    ctx.setsockopt(zmq.SNDHWM, 0)
    ctx.setsockopt(zmq.RCVHWM, 0)
    return ctx


def zmq_role_main(role: str, addresses: list[str]) -> int:
    """Run one process of a zmq reference: ``broker``/``proxy`` FRONT BACK, or ``worker`` BACK."""
    import zmq

    ctx = _zmq_context()
    if role == "worker":
        sock = ctx.socket(zmq.DEALER)
        sock.connect(addresses[0])
        sock.send(b"READY")  # registers with the Python broker; zmq.proxy just passes it on
        pid = str(os.getpid()).encode()
        while True:
            frames = sock.recv_multipart(copy=False)
            payload = frames[-1]
            if len(payload) == 1 and payload.bytes == ZmqEcho.PROBE:
                sock.send_multipart([*frames[:-1], pid])
            else:
                sock.send_multipart(frames, copy=False)
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER if role == "broker" else zmq.DEALER)
    front.bind(addresses[0])
    back.bind(addresses[1])
    if role == "proxy":
        zmq.proxy(front, back)  # the C loop; SIGTERM ends the process
        return 0
    # The Python broker: requests round-robin to the registered workers; replies routed back
    # by the client identity the worker returns.
    workers: deque[bytes] = deque()
    waiting: deque[list[Any]] = deque()
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            if sock is back:
                frames = back.recv_multipart(copy=False)
                if len(frames) == 2:  # [worker, READY]; the proxy's READY reaches no one
                    workers.append(frames[0].bytes)
                    while waiting:
                        workers.rotate(-1)
                        back.send_multipart([workers[0], *waiting.popleft()], copy=False)
                else:
                    front.send_multipart(frames[1:], copy=False)
            else:
                frames = front.recv_multipart(copy=False)
                if not workers:
                    waiting.append(frames)
                    continue
                workers.rotate(-1)
                back.send_multipart([workers[0], *frames], copy=False)


# -- the workloads --------------------------------------------------------------------------

Metrics = dict[str, list[float]]


def _settle() -> None:
    """Collect garbage before a timed run so one run's leftovers do not land in the next."""
    gc.collect()


def _timed(fn: Callable[[], None]) -> float:
    _settle()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _warm(n: int) -> int:
    """The warm-up size: enough to open connections, start pools and import what a task needs;
    capped, because on a system running 500 tasks/s every extra warm-up task costs 2 ms."""
    return max(1, min(n // 10, 1_000))


def _percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), interpolated linearly between the closest ranks."""
    pos = q * (len(sorted_values) - 1)
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def measure_noop(system: System, sizes: Sizes, runs: int) -> tuple[Metrics, str]:
    n = sizes.noop
    system.noop(_warm(n))
    return {"rate": [n / _timed(lambda: system.noop(n)) for _ in range(runs)]}, ""


def measure_io(system: System, sizes: Sizes, runs: int) -> tuple[Metrics, str]:
    n = sizes.io
    k = min(n, system.io_concurrency * IO_WAVES)
    system.sleep(min(k, system.io_concurrency))  # one wave
    # Scaled to n tasks when only k ran: each wave takes as long as the one before
    walls = [_timed(lambda: system.sleep(k)) * n / k for _ in range(runs)]
    waves = f"{IO_WAVES} waves of {system.io_concurrency:,}"
    note = "" if k == n else f"ran {k:,} tasks ({waves}), wall time × {n / k:g}"
    return {"wall": walls}, note


def measure_latency(system: System, sizes: Sizes, runs: int) -> tuple[Metrics, str]:
    for i in range(sizes.latency_warmup):
        system.call(i)
    p50s: list[float] = []
    p99s: list[float] = []
    for _ in range(runs):
        _settle()
        samples: list[float] = []
        for i in range(sizes.latency):
            t0 = time.perf_counter()
            if system.call(i) != i:
                raise RuntimeError("latency result came back wrong")
            samples.append(time.perf_counter() - t0)
        samples.sort()
        p50s.append(_percentile(samples, 0.50) * 1e6)
        p99s.append(_percentile(samples, 0.99) * 1e6)
    return {"p50": p50s, "p99": p99s}, ""


def measure_array(system: System, sizes: Sizes, runs: int) -> tuple[Metrics, str]:
    import numpy as np

    array = np.random.default_rng(0).random(sizes.array_bytes // 8)

    def trip() -> float:
        _settle()
        t0 = time.perf_counter()
        result = system.call(array)
        elapsed = time.perf_counter() - t0
        if not np.array_equal(result, array):
            raise RuntimeError("the array came back different")
        return elapsed

    trip()
    values = [
        statistics.median(trip() for _ in range(sizes.array_trips)) * 1e3 for _ in range(runs)
    ]
    return {"trip": values}, ""


def measure_stream(system: System, sizes: Sizes, runs: int) -> tuple[Metrics, str]:
    n = sizes.stream
    system.stream(_warm(n))
    return {"rate": [n / _timed(lambda: system.stream(n)) for _ in range(runs)]}, ""


def measure_scale(system: System, sizes: Sizes, runs: int) -> tuple[Metrics, str]:
    system.noop(sizes.scale[1])  # warm-up
    metrics: Metrics = {}
    for n in sizes.scale:
        once = functools.partial(system.noop, n)
        metrics[f"cost:{n}"] = [_timed(once) / n * 1e6 for _ in range(runs)]
    return metrics, ""


MEASURE: dict[str, Callable[[System, Sizes, int], tuple[Metrics, str]]] = {
    "noop": measure_noop,
    "io": measure_io,
    "latency": measure_latency,
    "array": measure_array,
    "stream": measure_stream,
    "scale": measure_scale,
}


def idle_rss(system: System) -> dict[str, float]:
    """RSS of the system's worker processes (median, MB) and of all the processes it started
    (sum, MB), read at rest after a small warm-up, so imports a first task pulls in count."""
    import psutil

    system.noop(100)
    time.sleep(1.0)
    workers = [psutil.Process(pid).memory_info().rss / 2**20 for pid in system.worker_pids()]
    everything = sum(p.memory_info().rss / 2**20 for p in psutil.Process().children(recursive=True))
    return {
        "worker_mb": statistics.median(workers) if workers else float("nan"),
        "total_mb": everything,
        "workers": len(workers),
    }


# -- the child: one system ------------------------------------------------------------------


class Reporter:
    """JSON lines to the parent over an inherited pipe. Not stdout: libraries print there."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields}) + "\n"
        os.write(self.fd, line.encode())


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= 120 else text[:117] + "..."


def child_main(
    name: str, workloads: list[str], sizes: Sizes, runs: int, processes: int, report: Reporter
) -> int:
    """Start one system, measure ``workloads`` in order, report each, stop the system."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    warnings.simplefilter("ignore")  # Dask's "large graph" and friends: known, and noise here
    try:
        system = SYSTEMS[name](processes)
    except Skipped as exc:
        report.send("skipped", reason=str(exc))
        return 0
    try:
        system.start()
        rss = idle_rss(system)
    except Exception as exc:
        logging.exception("start-up failed")
        report.send("startup-failed", error=_error(exc))
        system.stop()
        return 1
    report.send("ready", setup=system.setup, rss=rss)
    for workload in workloads:
        report.send("start", workload=workload)
        try:
            metrics, note = MEASURE[workload](system, sizes, runs)
        except NotSupported as exc:
            report.send("unsupported", workload=workload, reason=str(exc))
        except Exception as exc:
            logging.exception("%s failed", workload)
            report.send("failed", workload=workload, error=_error(exc))
        else:
            report.send("result", workload=workload, metrics=metrics, note=note)
    report.send("stopping")
    system.stop()
    return 0


# -- the parent: every system, with deadlines -----------------------------------------------


@dataclass
class Outcome:
    """One system on one workload: figures, or why there are none."""

    status: str = "ok"
    metrics: Metrics = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0


@dataclass
class SystemResult:
    name: str
    setup: str = ""
    #: "ok", or why the whole row is empty (skipped, failed to start)
    status: str = "ok"
    rss: dict[str, float] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


class Events:
    """The child's JSON lines, each awaited with a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(fd, selectors.EVENT_READ)

    def next(self, deadline: float) -> dict[str, Any] | None:
        """The next event; None at end of file.

        Raises:
            TimeoutError: the deadline passed first.
        """
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                raise TimeoutError
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        return event

    def close(self) -> None:
        self.selector.close()
        os.close(self.fd)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_system(name: str, args: argparse.Namespace, logs: Path) -> SystemResult:
    """Measure one system in child processes: a fresh child after each timeout or crash."""
    result = SystemResult(name)
    remaining = workloads_of(name)
    while remaining and result.status == "ok":
        read_fd, write_fd = os.pipe()
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            name,
            "--workloads",
            ",".join(remaining),
            "--runs",
            str(args.runs),
            "--processes",
            str(args.processes),
            "--report-fd",
            str(write_fd),
        ]
        if args.quick:
            cmd.append("--quick")
        with open(logs / f"{name}.log", "ab") as log:
            child = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        os.close(write_fd)
        events = Events(read_fd)
        current, started = "start-up", time.monotonic()
        deadline = started + STARTUP_TIMEOUT
        _log(f"{name}: starting")
        try:
            while True:
                event = events.next(deadline)
                if event is None:  # the child exited
                    if current == "start-up":
                        result.status = f"failed to start (exit code {child.wait()})"
                    elif current in remaining:
                        result.outcomes[current] = Outcome(f"failed: child exited ({child.wait()})")
                        remaining.remove(current)
                    break
                kind = event["type"]
                now = time.monotonic()
                if kind == "skipped":
                    result.status = f"skipped: {event['reason']}"
                elif kind == "startup-failed":
                    result.status = f"failed to start: {event['error']}"
                elif kind == "ready":
                    result.setup = event["setup"]
                    result.rss = result.rss or event["rss"]
                    _log(f"{name}: up in {now - started:.1f} s, {result.setup}")
                    current = ""
                elif kind == "start":
                    current, started = event["workload"], now
                    deadline = now + timeout_for(current, args.runs)
                elif kind == "stopping":
                    current, deadline = "stop", now + STOP_TIMEOUT
                else:
                    workload = event["workload"]
                    outcome = {
                        "result": lambda e: Outcome("ok", e["metrics"], e["note"]),
                        "unsupported": lambda e: Outcome(e["reason"]),
                        "failed": lambda e: Outcome(f"failed: {e['error']}"),
                    }[kind](event)
                    outcome.seconds = now - started
                    result.outcomes[workload] = outcome
                    remaining.remove(workload)
                    _log(f"{name}: {workload} {outcome.status} in {outcome.seconds:.1f} s")
        except TimeoutError:
            if current == "start-up":
                result.status = f"timed out starting (> {STARTUP_TIMEOUT:.0f} s)"
            elif current in remaining:
                limit = timeout_for(current, args.runs)
                result.outcomes[current] = Outcome(f"timed out (> {limit:.0f} s)")
                remaining.remove(current)
            _log(f"{name}: {current} timed out; stopping the child")
        finally:
            events.close()
            # The child and everything below it, by PID; orphans were reparented to us.
            stop_descendants()
            child.wait()
    return result


# -- the report -----------------------------------------------------------------------------

DASH = "—"


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "s":
        return f"{value:.2f} s" if value < 100 else f"{value:,.0f} s"
    if unit == "µs":
        return f"{value:,.0f} µs" if value < 10_000 else f"{value / 1000:,.1f} ms"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:g} {unit}"


def _fmt_ratio(ratio: float) -> str:
    if ratio >= 100:
        return f"{ratio:,.0f}×"
    if ratio >= 10:
        return f"{ratio:.0f}×"
    if ratio >= 1:
        return f"{ratio:.1f}×"
    if ratio >= 0.1:
        return f"{ratio:.2f}×"
    return f"{ratio:.2g}×"  # two significant digits: 0.0013×, not 0.00×


# column: (title, workload, metric, unit)
COLUMNS = (
    ("no-op throughput", "noop", "rate", "/s"),
    ("I/O-bound, 10k × 100 ms", "io", "wall", "s"),
    ("latency p50", "latency", "p50", "µs"),
    ("latency p99", "latency", "p99", "µs"),
    ("10 MB array round trip", "array", "trip", "ms"),
    ("stream", "stream", "rate", "/s"),
)


def figure(result: SystemResult | None, workload: str, metric: str) -> float | None:
    """The median of one figure, or None when it was not measured."""
    if result is None or result.status != "ok":
        return None
    outcome = result.outcomes.get(workload)
    if outcome is None or outcome.status != "ok" or metric not in outcome.metrics:
        return None
    return _median(outcome.metrics[metric])


def _cell(
    result: SystemResult, squall: SystemResult | None, workload: str, metric: str, unit: str
) -> str:
    if result.status != "ok":
        return DASH
    outcome = result.outcomes.get(workload)
    if outcome is None:
        return DASH
    if outcome.status != "ok":
        return outcome.status
    values = outcome.metrics[metric]
    approx = "≈ " if outcome.note else ""
    text = f"{approx}{_fmt(_median(values), unit)}"
    if len(values) > 1:
        text += f"<br>({_fmt(min(values), unit)}–{_fmt(max(values), unit)})"
    mine = figure(squall, workload, metric)
    if mine is not None and result is not squall:
        text += f"<br>squall {_fmt_ratio(mine / _median(values))}"
    return text


def _rss_cell(result: SystemResult, squall: SystemResult | None) -> str:
    if result.status != "ok" or not result.rss:
        return DASH
    worker, total = result.rss["worker_mb"], result.rss["total_mb"]
    text = f"{_fmt(worker, 'MB')} × {result.rss['workers']:.0f}<br>(all: {_fmt(total, 'MB')})"
    if squall is not None and squall.rss and result is not squall:
        text += f"<br>squall {_fmt_ratio(squall.rss['worker_mb'] / worker)}"
    return text


def best_other(
    results: dict[str, SystemResult], workload: str, metric: str, higher: bool
) -> tuple[str, float] | None:
    """The best figure among the other task systems (not squall, not the references)."""
    candidates = [
        (name, value)
        for name, result in results.items()
        if name != "squall"
        and name not in REFERENCES
        and (value := figure(result, workload, metric)) is not None
    ]
    if not candidates:
        return None
    return (max if higher else min)(candidates, key=lambda c: c[1])


def targets(
    results: dict[str, SystemResult], io_floor: float | None = None
) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: (target, what was measured, met). None: not measurable.

    ``io_floor``: the I/O-bound workload's floor on squall (its waves of sleeps end to end).
    """
    squall = results.get("squall")
    rows: list[tuple[str, str, bool | None]] = []

    def versus(label: str, workload: str, metric: str, higher: bool, limit: float) -> None:
        mine = figure(squall, workload, metric)
        best = best_other(results, workload, metric, higher)
        if mine is None or best is None:
            rows.append((label, "not measured", None))
            return
        ratio = mine / best[1] if higher else best[1] / mine
        rows.append((label, f"{_fmt_ratio(ratio)} ({best[0]})", ratio >= limit))

    def versus_echo(label: str, workload: str, metric: str, higher: bool, limit: float) -> None:
        """squall against the bare Python ZeroMQ echo (#14): a ratio of squall's figure to
        the echo's, at least ``limit`` (throughput) or at most (times)."""
        mine = figure(squall, workload, metric)
        bare = figure(results.get("zmq-python"), workload, metric)
        if mine is None or bare is None:
            rows.append((label, "not measured", None))
            return
        ratio = mine / bare
        rows.append((label, _fmt_ratio(ratio), ratio >= limit if higher else ratio <= limit))

    versus("no-op throughput ≥ 10× the best other", "noop", "rate", True, 10)
    versus("I/O-bound ≥ 10× faster than the best other", "io", "wall", False, 10)
    versus_echo("no-op throughput ≥ 1.3× bare Python ZeroMQ echo", "noop", "rate", True, 1.3)
    versus_echo("p50 ≤ 1.5× bare Python ZeroMQ echo", "latency", "p50", False, 1.5)
    versus_echo("p99 ≤ 2× bare Python ZeroMQ echo", "latency", "p99", False, 2.0)
    wall = figure(squall, "io", "wall")
    if io_floor is not None:
        label = f"I/O-bound ≤ 1.2× its floor ({io_floor:g} s: its waves of {IO_SLEEP:g} s sleeps)"
        if wall is None:
            rows.append((label, "not measured", None))
        else:
            rows.append((label, _fmt(wall, "s"), wall <= io_floor * 1.2))
    p50 = figure(squall, "latency", "p50")
    best = best_other(results, "latency", "p50", higher=False)
    if p50 is None or best is None:
        rows.append(("p50 ≤ 1/5 of the best other", "not measured", None))
    else:
        ratio = p50 / best[1]
        rows.append(
            ("p50 ≤ 1/5 of the best other", f"{_fmt_ratio(ratio)} ({best[0]})", ratio <= 0.2)
        )
    others = [
        (name, r.rss["worker_mb"])
        for name, r in results.items()
        if name != "squall" and name not in REFERENCES and r.status == "ok" and r.rss
    ]
    if squall is None or not squall.rss or not others:
        rows.append(("idle worker RSS below every other", "not measured", None))
    else:
        name, least = min(others, key=lambda o: o[1])
        mine = squall.rss["worker_mb"]
        rows.append(
            (
                "idle worker RSS below every other",
                f"{_fmt(mine, 'MB')} vs {_fmt(least, 'MB')} ({name})",
                mine < least,
            )
        )
    if squall is not None and squall.rss:
        mine = squall.rss["worker_mb"]
        label = f"idle worker RSS ≤ {RSS_TARGET_MB} MB"
        rows.append((label, _fmt(mine, "MB"), mine <= RSS_TARGET_MB))
    sizes = sorted(
        int(k.split(":")[1])
        for k in (squall.outcomes.get("scale", Outcome("")).metrics if squall else {})
    )
    base = figure(squall, "scale", "cost:10000")
    top = figure(squall, "scale", f"cost:{sizes[-1]}") if sizes else None
    label = "cost/task at 1M within 1.5× of 10k"
    if base is None or top is None or sizes[-1] <= 10_000:
        rows.append((label, "not measured", None))
    else:
        rows.append((label, f"{_fmt_ratio(top / base)} ({sizes[-1]:,} tasks)", top / base <= 1.5))
    return rows


def render_markdown(results: dict[str, SystemResult], meta: dict[str, Any]) -> str:
    squall = results.get("squall")
    lines = [
        f"# squall side by side ({meta['date']})",
        "",
        f"Machine: {meta['cores']} cores ({meta['cpu']}), {meta['memory_gb']:.1f} GB, "
        f"{meta['platform']}, Python {meta['python']}. Load average {meta['load_before']:.2f} "
        f"before, {meta['load_after']:.2f} after. {meta['runs']} measured run(s) per figure "
        f"after a warm-up{' (--quick: tiny sizes, not figures to quote)' if meta['quick'] else ''}"
        f"; {meta['processes']} worker processes per system; total {meta['elapsed']:.0f} s.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        "Each cell: median, (min–max) over the runs, and **squall r×** = squall's median ÷ "
        "this system's, same run. For throughput and streams, r > 1 means squall is faster. "
        "For times and memory, r < 1 means squall is faster or smaller. ≈: scaled from fewer "
        "tasks (see notes).",
        "",
        "| system | setup | idle RSS per worker process | "
        + " | ".join(c[0] for c in COLUMNS)
        + " |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for name, result in results.items():
        setup = result.setup if result.status == "ok" else result.status
        cells = [_cell(result, squall, w, m, u) for _, w, m, u in COLUMNS]
        lines.append(
            f"| {name} | {setup} | {_rss_cell(result, squall)} | " + " | ".join(cells) + " |"
        )
    notes = [
        f"- {name}, {workload}: {outcome.note}"
        for name, result in results.items()
        for workload, outcome in result.outcomes.items()
        if outcome.note
    ]
    if notes:
        lines += ["", "Notes:", "", *notes]
    scale = squall.outcomes.get("scale") if squall else None
    if scale is not None and scale.status == "ok":
        base = figure(squall, "scale", "cost:10000")
        lines += [
            "",
            "squall scale: no-op cost per task (`list(ex.map(echo, range(n)))`):",
            "",
            "| tasks | cost per task | min | max | ÷ cost at 10k |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for key, values in scale.metrics.items():
            n = int(key.split(":")[1])
            ratio = _fmt_ratio(_median(values) / base) if base else DASH
            lines.append(
                f"| {n:,} | {_fmt(_median(values), 'µs')} | {_fmt(min(values), 'µs')} "
                f"| {_fmt(max(values), 'µs')} | {ratio} |"
            )
    elif scale is not None:
        lines += ["", f"squall scale: {scale.status}."]
    sizes = QUICK if meta["quick"] else FULL
    waves = math.ceil(sizes.io / (meta["processes"] * GREEN_CONCURRENCY))
    rows = targets(results, io_floor=waves * IO_SLEEP)
    lines += ["", "| target | measured | met |", "| --- | --- | :---: |"]
    for label, measured, met in rows:
        mark = DASH if met is None else ("yes" if met else "**no**")
        lines.append(f"| {label} | {measured} | {mark} |")
    return "\n".join(lines) + "\n"


def render_chart(results: dict[str, SystemResult], path: Path) -> None:
    """Six panels: one per workload, and squall's cost per task against the task count. Error
    bars span min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("no-op throughput (tasks/s, higher is better)", "noop", ("rate",)),
        ("I/O-bound: 10k × 100 ms wall time (s, lower is better)", "io", ("wall",)),
        ("round-trip latency (µs): p50, p99 (light)", "latency", ("p50", "p99")),
        ("10 MB array round trip (ms, lower is better)", "array", ("trip",)),
        ("stream (items/s, higher is better)", "stream", ("rate",)),
    )
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    names = list(results)
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    for ax, (title, workload, metrics) in zip(axes.flat, panels, strict=False):
        ax.set_title(title, fontsize=10)
        shown = [n for n in names if figure(results[n], workload, metrics[0]) is not None]
        width = 0.8 / len(metrics)
        for j, metric in enumerate(metrics):
            for i, name in enumerate(shown):
                values = results[name].outcomes[workload].metrics[metric]
                med = _median(values)
                ax.bar(
                    i + (j - (len(metrics) - 1) / 2) * width,
                    med,
                    width,
                    yerr=[[med - min(values)], [max(values) - med]],
                    capsize=3,
                    color=colours[name],
                    alpha=1.0 if j == 0 else 0.5,
                    hatch="//" if results[name].outcomes[workload].note else None,
                )
        ax.set_xticks(range(len(shown)), shown, rotation=35, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
        if not shown:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    ax = axes.flat[5]
    ax.set_title("squall: no-op cost per task (µs) vs tasks", fontsize=10)
    squall = results.get("squall")
    scale = squall.outcomes.get("scale") if squall else None
    if scale is not None and scale.status == "ok":
        ns = [int(k.split(":")[1]) for k in scale.metrics]
        meds = [_median(v) for v in scale.metrics.values()]
        lows = [m - min(v) for m, v in zip(meds, scale.metrics.values(), strict=True)]
        highs = [max(v) - m for m, v in zip(meds, scale.metrics.values(), strict=True)]
        ax.errorbar(ns, meds, yerr=[lows, highs], marker="o", capsize=3, color=colours["squall"])
        base = figure(squall, "scale", "cost:10000")
        if base is not None:
            ax.axhline(base * 1.5, linestyle="--", color="grey", label="1.5 × cost at 10k")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_ylim(0, max(m + h for m, h in zip(meds, highs, strict=True)) * 1.3)
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    fig.suptitle("squall side by side: median of runs, error bars min–max; hatched: scaled")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(args: argparse.Namespace, systems: list[str]) -> dict[str, Any]:
    """What ran where: for the header, so figures from different machines are not compared."""
    import psutil
    import zmq

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for name in systems:
        for package in PACKAGES[name]:
            versions[package] = _version(package)
    if "pyzmq" in versions:
        versions["libzmq"] = zmq.zmq_version()
    if any(name.startswith(("celery", "dramatiq")) for name in systems):
        redis = shutil.which("redis-server")
        if redis:
            out = subprocess.run([redis, "--version"], capture_output=True, text=True).stdout
            versions["redis-server"] = out.split("v=")[1].split()[0] if "v=" in out else "?"
    return {
        "date": datetime.date.today().isoformat(),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": psutil.virtual_memory().total / 2**30,
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "versions": versions,
        "runs": args.runs,
        "quick": args.quick,
        "processes": args.processes,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the same workloads on squall, Celery, Dramatiq, Dask, Ray, IPython "
        "Parallel and bare ZeroMQ; write a Markdown table and a PNG chart."
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from: {', '.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 run: a smoke test")
    parser.add_argument(
        "--runs", type=int, default=None, help="measured runs per figure (default 3; 1 quick)"
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="worker processes per system (default 2)"
    )
    parser.add_argument(
        "--out", default=str(HERE / "out"), help="output folder (default: benchmarks/out)"
    )
    # internal: a child measuring one system, and the zmq reference processes
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", help=argparse.SUPPRESS)
    parser.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--zmq-role", nargs="+", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.zmq_role:
        return zmq_role_main(args.zmq_role[0], args.zmq_role[1:])
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1 or args.processes < 1:
        parser.error("--runs and --processes must be at least 1")
    sizes = QUICK if args.quick else FULL
    if args.child:
        workloads = args.workloads.split(",") if args.workloads else []
        return child_main(
            args.child, workloads, sizes, args.runs, args.processes, Reporter(args.report_fd)
        )

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s): {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    # squall first: the others' ratios need its figures, and a broken squall shows at once
    systems.sort(key=lambda s: list(SYSTEMS).index(s))
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    become_subreaper()
    # A child that is interrupted still has its processes stopped (run_system's finally)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    meta = machine(args, systems)
    meta["load_before"] = os.getloadavg()[0]
    started = time.monotonic()
    results = {name: run_system(name, args, logs) for name in systems}
    meta["elapsed"] = time.monotonic() - started
    meta["load_after"] = os.getloadavg()[0]

    markdown = render_markdown(results, meta)
    (out / "results.md").write_text(markdown)
    render_chart(results, out / "results.png")
    raw = {"meta": meta, "results": {name: asdict(r) for name, r in results.items()}}
    (out / "results.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
    print(markdown)
    _log(f"wrote {out / 'results.md'}, {out / 'results.png'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
