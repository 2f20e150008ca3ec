"""Settings of the router and of worker nodes, filled from the CLI and environment in one place."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from squall.errors import SquallError

if TYPE_CHECKING:
    import zmq

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
        insecure: allow a TCP address (loopback included) without authentication.
        max_worker_deaths: a task whose worker dies this often fails with WorkerLost.
        max_queued: tasks one client may have waiting in the router.
        max_message_size: bytes; a peer sending a bigger message is disconnected.
        auth: directory with the router's CURVE key pair and the allowed client and worker
            keys (see ``squall.auth``); None: no authentication (an ipc:// path, or insecure).
        handshake_timeout: seconds a new connection has to finish its security handshake.
        max_client_bytes: argument bytes one client's tasks may hold in the router.
        max_held_bytes: argument bytes all clients' tasks may hold in the router together.
        max_recent_bytes: bytes of finished outcomes kept for dependents submitted late.
        max_body_size: bytes one function body may have (its own, much smaller limit).
        max_backlog: messages that may wait for one peer that reads too slowly; past it (or
            past ``max_backlog_bytes``) the peer is cut off.
        max_backlog_bytes: bytes that may wait for one peer.
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
    max_client_bytes: int = 512 << 20
    max_held_bytes: int = 2 << 30
    max_recent_bytes: int = 64 << 20
    max_body_size: int = 16 << 20
    max_backlog: int = 10_000
    max_backlog_bytes: int = 64 << 20

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
        insecure: allow a non-loopback router address without authentication.

    Raises:
        SquallError: a bad setting, or a remote router without ``auth`` or ``insecure``.
    """

    connect: str
    processes: int = os.cpu_count() or 1
    concurrency: int = 1000
    heartbeat: float = DEFAULT_HEARTBEAT
    parent_pid: int | None = None
    grace: float = 30.0
    auth: str | None = None
    key: str = "worker"
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise SquallError("--processes must be at least 1")
        if self.concurrency < 1:
            raise SquallError("--concurrency must be at least 1")
        if needs_auth_to_connect(self.connect, self.auth, self.insecure):
            raise SquallError(
                f"refusing to connect to {self.connect} without authentication: whoever answers "
                "there can run any code on this worker; pass --auth DIR (see squall keygen), "
                "or --insecure on a network you trust"
            )

    @classmethod
    def from_env(cls, connect: str, **overrides: object) -> WorkerConfig:
        values: dict[str, object] = {"heartbeat": _env_float("SQUALL_HEARTBEAT", DEFAULT_HEARTBEAT)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(connect=connect, **values)  # type: ignore[arg-type]


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


def _tcp_host(address: str) -> str:
    """The host of a ``tcp://[SOURCE;]HOST:PORT`` address, without IPv6 brackets."""
    rest = address[len("tcp://") :].rsplit(";", 1)[-1]  # connect: the peer is after the ';'
    host = rest.rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def is_loopback(address: str) -> bool:
    """Whether ``address`` stays on this machine: ipc://, inproc://, or TCP to a loopback IP.

    The host must parse as an IP address (or be ``localhost``): ``127.lan`` or
    ``127.0.0.1.evil.com`` are names that may resolve anywhere, and ``*`` or ``0.0.0.0`` mean
    every interface.
    """
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = _tcp_host(address)
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _is_abstract_ipc(address: str) -> bool:
    return address.startswith("ipc://@")


def check_listen_policy(address: str, auth: str | None, insecure: bool) -> None:
    """Refuse a router address that would let others run code on its workers unauthenticated.

    Without ``auth`` the only private address is an ipc:// path (its socket is made 0600 by
    :func:`bind_router_socket`). Any TCP port, loopback included, is open to every local user,
    and an abstract ipc name has no file permissions at all; TCP is allowed with ``insecure``,
    an abstract name never.

    Raises:
        SquallError: one line saying why, and what to do instead.
    """
    if auth:
        return
    if _is_abstract_ipc(address):
        raise SquallError(
            f"refusing to listen on {address} without authentication: any local user can "
            "connect to an abstract ipc name and run code on your workers; bind an ipc:// path "
            "(made private to you), or pass --auth DIR (see squall keygen)"
        )
    if address.startswith("tcp://") and not insecure:
        who = "any local user" if is_loopback(address) else "anyone who can reach it"
        raise SquallError(
            f"refusing to listen on {address} without authentication: {who} could run code "
            "on your workers; pass --auth DIR (see squall keygen), bind an ipc:// path for a "
            "same-user setup, or pass --insecure to allow it"
        )


def needs_auth_to_connect(address: str, auth: str | None, insecure: bool) -> bool:
    """Whether connecting to ``address`` as given must be refused: a remote peer, no keys.

    A worker runs whatever its router sends and a client unpickles what comes back, so talking
    without keys to an address beyond this machine trusts everyone on the way to it.
    """
    return not auth and not insecure and not is_loopback(address)


def check_client_policy(address: str, auth: str | None, insecure: bool) -> None:
    """Refuse a client connection to a remote router without authentication.

    Raises:
        SquallError: one line saying why, and what to do instead.
    """
    if needs_auth_to_connect(address, auth, insecure):
        raise SquallError(
            f"refusing to connect to {address} without authentication: whoever answers there "
            "sees your tasks and can run code in this process; pass auth=DIR (see squall "
            "keygen), or insecure=True on a network you trust"
        )


def _ipc_path(address: str) -> str | None:
    """The socket file of an ipc:// address; None for abstract names and ``ipc://*``."""
    path = address[len("ipc://") :]
    return None if not path or path.startswith("@") or path == "*" else path


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and any missing parents, each mode 0700; existing ones stay as they are.

    ``os.makedirs(mode=...)`` applies the mode to the last directory only; the parents it
    makes would be readable by everyone.

    Raises:
        SquallError: a directory cannot be created.
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise SquallError(
                    f"cannot create directory {directory}: a file is in the way"
                ) from None
        except OSError as exc:
            raise SquallError(f"cannot create directory {directory}: {exc.strerror}") from None


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def bind_router_socket(socket: zmq.Socket[Any], address: str, *, private: bool = True) -> str:
    """Bind ``socket`` to ``address``; return the endpoint actually bound (``LAST_ENDPOINT``).

    With ``private`` (the router runs without authentication), an ipc:// socket file is
    created mode 0600 under a umask of 0177, so it is never connectable by another user, not
    even for an instant; a missing parent directory is created mode 0700. TCP addresses are
    bound as they are (:func:`check_listen_policy` decides whether they may be).

    Raises:
        zmq.ZMQError: the address cannot be bound.
        SquallError: the socket's parent directory cannot be created.
    """
    import zmq

    path = _ipc_path(address) if address.startswith("ipc://") else None
    if private and path is not None:
        parent = os.path.dirname(path)
        if parent:
            make_private_dirs(parent)
        with _umask(0o177):
            socket.bind(address)
    else:
        socket.bind(address)
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)
