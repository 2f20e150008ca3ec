"""Settings of the router and of worker nodes, filled from the CLI and environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from squall.errors import SquallError

DEFAULT_HEARTBEAT = 1.0
DEFAULT_LIVENESS = 3.0


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class RouterConfig:
    """How a router runs.

    Args:
        bind: the one address clients and workers both connect to.
        heartbeat: seconds between heartbeats the router sends to its peers.
        liveness: seconds of silence after which a worker is declared dead and its tasks are
            given to others.
        parent_pid: exit when this process is gone (set by the embedded default).
        insecure: allow a non-loopback TCP address without authentication.
        max_worker_deaths: a task whose worker dies this often fails with WorkerLost.
        max_queued: tasks one client may have waiting in the router.
        max_message_size: bytes; a peer sending a bigger message is disconnected.
        auth: directory with the router's CURVE key pair and the allowed client and worker
            keys (see ``squall.auth``); None: no authentication (loopback only, or insecure).
        handshake_timeout: seconds a new connection has to finish its security handshake.
    """

    bind: str
    heartbeat: float = DEFAULT_HEARTBEAT
    liveness: float = DEFAULT_LIVENESS
    parent_pid: int | None = None
    insecure: bool = False
    max_worker_deaths: int = 3
    max_queued: int = 1_000_000
    max_message_size: int = 1 << 30
    auth: str | None = None
    handshake_timeout: float = 10.0

    @classmethod
    def from_env(cls, bind: str, **overrides: object) -> RouterConfig:
        values: dict[str, object] = {
            "heartbeat": _env_float("SQUALL_HEARTBEAT", DEFAULT_HEARTBEAT),
            "liveness": _env_float("SQUALL_LIVENESS", DEFAULT_LIVENESS),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(bind=bind, **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker node runs.

    Args:
        connect: the router's address.
        processes: worker processes in this node, each one gevent hub.
        concurrency: greenlets (tasks at once) per process.
        heartbeat: seconds between heartbeats to the router.
        parent_pid: exit when this process is gone.
        grace: on SIGTERM, seconds running tasks get to finish before the rest are handed
            back to the router.
        auth: directory with ``router.key`` and this node's ``KEY.key_secret``.
        key: the name of this node's key pair in ``auth``.
    """

    connect: str
    processes: int = os.cpu_count() or 1
    concurrency: int = 1000
    heartbeat: float = DEFAULT_HEARTBEAT
    parent_pid: int | None = None
    grace: float = 30.0
    auth: str | None = None
    key: str = "worker"

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise SquallError("--processes must be at least 1")
        if self.concurrency < 1:
            raise SquallError("--concurrency must be at least 1")

    @classmethod
    def from_env(cls, connect: str, **overrides: object) -> WorkerConfig:
        values: dict[str, object] = {"heartbeat": _env_float("SQUALL_HEARTBEAT", DEFAULT_HEARTBEAT)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(connect=connect, **values)  # type: ignore[arg-type]


_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def validate_address(address: str) -> str:
    """Check that ``address`` is a ZeroMQ endpoint squall can use; return it.

    Raises:
        SquallError: with a one-line reason.
    """
    scheme = address.split("://", 1)[0] if "://" in address else ""
    if scheme not in ("tcp", "ipc", "inproc"):
        raise SquallError(
            f"{address!r} is not a ZeroMQ address: use tcp://HOST:PORT or ipc:///path/to/socket"
        )
    if scheme == "tcp" and urlsplit(address).port is None and not address.endswith(":*"):
        raise SquallError(f"{address!r} has no port: use tcp://HOST:PORT")
    return address


def is_loopback(address: str) -> bool:
    """Whether binding ``address`` exposes nothing beyond this machine."""
    if not address.startswith("tcp://"):
        return True  # ipc:// and inproc:// never leave the machine
    host = address[len("tcp://") :].rsplit(":", 1)[0]
    return host in _LOOPBACK or host.startswith("127.")
