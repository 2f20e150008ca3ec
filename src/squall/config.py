"""Settings of the router and of worker nodes, filled from the CLI and environment in one place."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from squall.errors import ConfigError
from squall.protocol import DEFAULT_QUEUE, MAX_QUEUES, valid_queue

if TYPE_CHECKING:
    import zmq

DEFAULT_HEARTBEAT = 1.0
DEFAULT_LIVENESS = 3.0
#: a peer sends this many heartbeats (or HELLOs, while reconnecting) per liveness window, so
#: one or two lost to a busy moment never look like a death
BEATS_PER_LIVENESS = 3
#: a client is declared gone after this many liveness windows of silence: it may be busy
#: unpickling a large result, and it loses its queued tasks when declared gone
CLIENT_LIVENESS_WINDOWS = 5
#: a client takes the router for lost (and says HELLO again) after this many of its
#: heartbeat intervals of silence
ROUTER_SILENCE_BEATS = 5
#: messages read per poll wake-up before the loop turns to its other work
DRAIN_BATCH = 2000
#: seconds a stopping process gives its children (worker processes, an embedded router and
#: node) after SIGTERM before SIGKILL
STOP_GRACE = 5.0


def _env_float(name: str, default: float) -> float:
    """A number of seconds from the environment; a value that is not one is an error, not a
    traceback.

    Raises:
        ConfigError: ``name`` is set to something other than a number.
    """
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number of seconds") from None


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
        data: directory where background tasks are kept (SQLite); None: in memory only.
        fsync: how durable a commit of ``data`` is: "full", "normal" or "off" (see
            ``squall.router.store``).
        result_ttl: seconds a finished background task's outcome is kept by default.
        queue_limits: ``--limit``: starts per period and tasks running at once, per queue,
            across all workers.
        max_kept_bytes: bytes of kept background tasks and outcomes; past it the oldest
            finished outcomes go first.
        history: finished tasks the router remembers for ``squall status``, the dashboard
            and task queries (``--history``); 0 remembers none.
        metrics_bind: HOST:PORT to serve Prometheus metrics on (``--metrics-bind``); None:
            not served (the HTTP gateway serves them too).
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
    data: str | None = None
    fsync: str = "full"
    result_ttl: float = 86_400.0
    max_kept_bytes: int = 1 << 30
    #: global limits per queue, as (queue, starts per period or None, period, concurrency)
    queue_limits: tuple[tuple[str, int | None, float, int | None], ...] = ()
    history: int = 100_000
    metrics_bind: str | None = None

    @classmethod
    def from_env(cls, bind: str, **overrides: object) -> RouterConfig:
        values: dict[str, object] = {
            "heartbeat": _env_float("SQUALL_HEARTBEAT", DEFAULT_HEARTBEAT),
            "liveness": _env_float("SQUALL_LIVENESS", DEFAULT_LIVENESS),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(bind=bind, **values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        """Refuse settings the router cannot run with: a heartbeat of 0 or less spins its
        loop, and a liveness window no longer than the heartbeat declares every worker dead.

        Raises:
            ConfigError: one line naming the flag.
        """
        for flag, seconds in (
            ("--heartbeat", self.heartbeat),
            ("--liveness", self.liveness),
            ("handshake_timeout", self.handshake_timeout),
        ):
            if not (math.isfinite(seconds) and seconds > 0):
                raise ConfigError(f"{flag} must be a positive number of seconds, not {seconds}")
        if self.liveness <= self.heartbeat:
            raise ConfigError(
                f"--liveness ({self.liveness:g} s) must be longer than --heartbeat "
                f"({self.heartbeat:g} s), or every peer is declared dead between two heartbeats"
            )
        for flag, count in (
            ("--max-worker-deaths", self.max_worker_deaths),
            ("--max-queued", self.max_queued),
            ("--max-message-size", self.max_message_size),
            ("--max-client-bytes", self.max_client_bytes),
            ("--max-held-bytes", self.max_held_bytes),
            ("--max-recent-bytes", self.max_recent_bytes),
            ("--max-body-size", self.max_body_size),
            ("--max-backlog", self.max_backlog),
            ("--max-backlog-bytes", self.max_backlog_bytes),
        ):
            if count < 1:
                raise ConfigError(f"{flag} must be at least 1, not {count}")


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
        block_limit: seconds a process's hub may stay blocked by one task (CPU-bound code that
            never yields) before the process is restarted and that task fails with
            TaskTimeout; 0: never. Generous by default, since a long computation under it is
            legitimate and is never run again.
        max_tasks_per_process: a process that has taken this many tasks drains (it finishes
            them, takes no more) and is replaced by a fresh one; 0: no limit.
        max_memory_per_process: MiB of resident memory past which a process drains and is
            replaced (checked every second); 0: no limit. Both guard against leaky libraries.
        worker_id: the routing id (hex) of a worker process, chosen by its node so that the
            node can vouch for it; set by the node.
        status_fd: the pipe a worker process's watchdog reports on to its node; set by the
            node.
        queues: the named queues whose tasks it runs (``--queues emails,default``).
        imports: modules whose ``@squall.function(name)`` functions it serves by name
            (``--import myapp.tasks``, repeatable).

    Raises:
        ConfigError: a bad setting, or a remote router without ``auth`` or ``insecure``.
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
    block_limit: float = 60.0
    max_tasks_per_process: int = 0
    max_memory_per_process: int = 0
    worker_id: str | None = None
    status_fd: int | None = None
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    imports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "imports", tuple(self.imports))
        queues = self.queues.split(",") if isinstance(self.queues, str) else self.queues
        object.__setattr__(self, "queues", tuple(q.strip() for q in queues))
        bad = [q for q in self.queues if not valid_queue(q)]
        if bad or not self.queues or len(self.queues) > MAX_QUEUES:
            raise ConfigError(
                f"--queues takes 1 to {MAX_QUEUES} comma-separated names of letters, digits "
                f"and _-.: (not {','.join(bad) or self.queues!r})"
            )
        if self.processes < 1:
            raise ConfigError("--processes must be at least 1")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        for flag, value in (
            ("--block-limit", self.block_limit),
            ("--max-tasks-per-process", self.max_tasks_per_process),
            ("--max-memory-per-process", self.max_memory_per_process),
        ):
            if value < 0:
                raise ConfigError(f"{flag} must be 0 (no limit) or more")
        if needs_auth_to_connect(self.connect, self.auth, self.insecure):
            raise ConfigError(
                f"refusing to connect to {self.connect} without authentication: whoever answers "
                "there can run any code on this worker; pass --auth DIR (see squall keygen), "
                "or --insecure on a network you trust"
            )

    @classmethod
    def from_env(cls, connect: str, **overrides: object) -> WorkerConfig:
        values: dict[str, object] = {"heartbeat": _env_float("SQUALL_HEARTBEAT", DEFAULT_HEARTBEAT)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(connect=connect, **values)  # type: ignore[arg-type]


#: a DNS name (RFC 1123 labels, plus the ``_`` container names use) or an interface name
#: such as ``eth0``
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?",
    re.IGNORECASE,
)
_TCP_USAGE = "use tcp://HOST:PORT (IPv6: tcp://[::1]:PORT) or ipc:///path/to/socket"


def validate_address(address: str, *, bind: bool = False) -> str:
    """Check that ``address`` is a ZeroMQ endpoint squall can use; return it.

    libzmq's own errors for a bad endpoint are "Invalid argument" or "No such device", and
    Python's URL parser raises a traceback for a port out of range: this says what is wrong.

    Args:
        address: ``tcp://HOST:PORT`` (HOST a name, an IPv4 or IPv6 address, IPv6 in
            brackets), ``ipc:///path`` or ``inproc://name``.
        bind: the address is to be bound, where ``*`` may stand for every interface or any
            free port (``tcp://*:5555``, ``tcp://127.0.0.1:*``, ``ipc://*``).

    Raises:
        ConfigError: with a one-line reason.
    """
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        raise ConfigError(f"{address!r} is not a ZeroMQ address: {_TCP_USAGE}")
    if any(c.isspace() for c in address):
        raise ConfigError(f"{address!r} contains white space: {_TCP_USAGE}")
    if scheme == "tcp":
        _check_tcp(address, rest, bind)
    elif not rest or (rest == "*" and not bind):
        raise ConfigError(f"{address!r} names no {scheme} endpoint: {_TCP_USAGE}")
    return address


def _check_tcp(address: str, rest: str, bind: bool) -> None:
    """Check ``[SOURCE;]HOST:PORT``: a port from 1 to 65535 (``*`` or 0 to bind) and a host
    that is an IP address, a name, or ``*`` (to bind)."""
    source, _, peer = rest.rpartition(";")
    host, colon, port = peer.rpartition(":")
    if not colon or not port:
        raise ConfigError(f"{address!r} has no port: use tcp://HOST:PORT")
    lowest = 0 if bind else 1  # port 0 binds any free port, as * does
    if port == "*" and bind:
        pass
    elif not port.isdigit() or len(port) > 5:
        raise ConfigError(f"{address!r}: {port!r} is not a port number: use tcp://HOST:PORT")
    elif not lowest <= int(port) <= 65535:
        raise ConfigError(f"{address!r}: port {int(port)} is out of range: use 1 to 65535")
    _check_host(address, host, bind)
    if source:  # connect from a chosen interface: SOURCE is HOST or HOST:PORT
        source_host, colon, source_port = source.rpartition(":")
        if not colon or _ip(source) is not None:
            source_host, source_port = source, "0"
        if not source_port.isdigit() or int(source_port) > 65535:
            raise ConfigError(f"{address!r}: {source_port!r} is not a source port")
        _check_host(address, source_host, True)


def _check_host(address: str, host: str, bind: bool) -> None:
    if not host:
        raise ConfigError(f"{address!r} has no host: use tcp://HOST:PORT")
    if host == "*":
        if bind:
            return
        raise ConfigError(f"{address!r}: '*' (every interface) is for binding: name the host")
    if host.startswith("[") and host.endswith("]"):
        if not isinstance(_ip(host[1:-1]), ipaddress.IPv6Address):
            raise ConfigError(f"{address!r}: {host!r} is not an IPv6 address")
        return
    if _ip(host) is None and not _HOST_NAME.fullmatch(host):
        raise ConfigError(f"{address!r}: {host!r} is not a host name or IP address: {_TCP_USAGE}")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_ipv6(address: str) -> bool:
    """Whether ``address`` is TCP to (or from) an IPv6 literal, ``tcp://[::1]:5555``."""
    if not address.startswith("tcp://"):
        return False
    *sources, peer = address[len("tcp://") :].split(";")
    hosts = [peer.rpartition(":")[0]]
    hosts += [source if _ip(source) else source.rpartition(":")[0] for source in sources]
    return any(isinstance(_ip(host.strip("[]")), ipaddress.IPv6Address) for host in hosts)


def prepare_socket(socket: zmq.Socket[Any], address: str) -> None:
    """Set what ``socket`` needs before it binds or connects to ``address``; call it first.

    libzmq leaves IPv6 off on every socket and then reports an IPv6 address as "No such
    device", so an IPv6 literal turns it on. Host names are left to IPv4: with IPv6 on, a name
    such as ``localhost`` may resolve to ``::1`` while the router listens on 127.0.0.1.
    """
    import zmq

    if is_ipv6(address):
        socket.setsockopt(zmq.IPV6, 1)


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
        ConfigError: one line saying why, and what to do instead.
    """
    if auth:
        return
    if _is_abstract_ipc(address):
        raise ConfigError(
            f"refusing to listen on {address} without authentication: any local user can "
            "connect to an abstract ipc name and run code on your workers; bind an ipc:// path "
            "(made private to you), or pass --auth DIR (see squall keygen)"
        )
    if address.startswith("tcp://") and not insecure:
        who = "any local user" if is_loopback(address) else "anyone who can reach it"
        raise ConfigError(
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
        ConfigError: one line saying why, and what to do instead.
    """
    if needs_auth_to_connect(address, auth, insecure):
        raise ConfigError(
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
        ConfigError: a directory cannot be created.
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
                raise ConfigError(
                    f"cannot create directory {directory}: a file is in the way"
                ) from None
        except OSError as exc:
            raise ConfigError(f"cannot create directory {directory}: {exc.strerror}") from None


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
    bound as they are (:func:`check_listen_policy` decides whether they may be), IPv6 ones
    after :func:`prepare_socket`.

    Raises:
        zmq.ZMQError: the address cannot be bound.
        ConfigError: the socket's parent directory cannot be created.
    """
    import zmq

    prepare_socket(socket, address)
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
