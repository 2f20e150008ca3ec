"""CurveZMQ keys and the router's ZAP handler: who may connect, and as what.

An auth directory on the router holds its own key pair and two allow-lists of public keys::

    keys/router.key, keys/router.key_secret     squall keygen --out keys router
    keys/clients/*.key                           may submit tasks
    keys/clients/operators/*.key                 ... and see and act on the whole fleet
    keys/workers/*.key                           may register as workers and run them
    keys/workers/GROUP/*.key                     ... as workers of that group

A client or worker holds ``router.key`` (the router's public key) and its own key pair
(``client.key_secret`` or ``worker.key_secret`` by default, another name with ``key=``).
``squall keygen --out keys --client alice`` (or ``--worker node1 [--group gpu]``) makes both
halves at once: the public key in the allow-list, and ``keys/peers/alice/`` with
``router.key`` and alice's pair, the folder to hand to that peer. The router never reads
``peers/``, and no secret ever goes into ``clients/`` or ``workers/``.

The ZAP handler answers ZeroMQ's authentication requests inside the router's own poll loop (no
thread, nothing that blocks): a key from ``clients/`` is admitted with user id
``client:<key>``, one from ``workers/`` with ``worker:<key>``, anything else is refused before a
single message gets through. The router then checks every message against its sender's role.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85

from squall.config import make_private_dirs
from squall.errors import ConfigError
from squall.log import get_logger

log = get_logger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
CLIENT, WORKER = "client", "worker"
#: where each role's public keys go in the router's auth directory
ALLOW_LISTS = {CLIENT: "clients", WORKER: "workers"}
#: the subfolder of clients/ whose keys are operators'
OPERATORS = "operators"
#: the folder of ``keys/peers/NAME`` hand-off folders (router.key and the peer's pair)
PEERS = "peers"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


_BANNERS = {
    "public": (
        "#   ZeroMQ CURVE Public Certificate\n#   Share it with the peers that must trust this key."
    ),
    "secret": (
        "#   ZeroMQ CURVE **Secret** Certificate\n"
        "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."
    ),
}


def _certificate(kind: str, public: bytes, secret: bytes | None = None) -> bytes:
    """A key file in the ZPL text format ``zmq.auth.load_certificate`` reads."""
    lines = [
        f"#   ****  Generated on {datetime.datetime.now()} by squall keygen  ****",
        _BANNERS[kind],
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def _check_directory(directory: Path) -> None:
    """Refuse a directory other users may rename files in: they could swap the keys."""
    mode = os.stat(directory).st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise ConfigError(
            f"{directory} is writable by other users, who could swap the keys: "
            "use a directory only you can write to"
        )


def _write_exclusive(path: Path, content: bytes, mode: int, replace: bool) -> None:
    """Create ``path`` with ``mode`` from the start (never readable by others, not even for
    an instant), refusing one that exists; with ``replace``, write a fresh temporary file the
    same way and move it over ``path`` in one step.

    Raises:
        ConfigError: ``path`` exists (without ``replace``), or cannot be written.
    """
    target = path.with_name(f".{path.name}.{secrets.token_hex(8)}") if replace else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists; pass --force to replace it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed the public key's mode
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(target, path)
    except OSError as exc:
        if replace:
            target.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def check_name(name: str, what: str = "key name") -> str:
    """Refuse a key or group name that is not one plain file name (``../x``, ``a/b``, ``.x``):
    it would put keys outside the folder they belong in. Return it.

    Raises:
        ConfigError: one line saying what a name may hold.
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a {what}: use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def keygen(out_dir: str | os.PathLike[str], name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (mode 0644) and ``NAME.key_secret`` (mode 0600) in ZeroMQ's
    certificate format; return their paths.

    The secret file is created with mode 0600 and ``O_EXCL``, so no other local user can open
    it in between, and a planted file or symlink is refused rather than written through.
    Directories that do not exist yet are created mode 0700; an existing one keeps its mode.

    Args:
        out_dir: where the pair goes.
        name: the pair's name (``router``, or a client's or worker node's).
        force: replace an existing pair (each file atomically) instead of refusing.

    Raises:
        ConfigError: the pair exists (without ``force``), the directory is writable by other
            users, a file cannot be written, or ``name`` is not a plain file name.
    """
    check_name(name)
    root = Path(out_dir)
    make_private_dirs(root)
    _check_directory(root)
    public_path, secret_path = root / f"{name}.key", root / f"{name}.key_secret"
    if not force:
        for path in (secret_path, public_path):
            if os.path.lexists(path):
                raise ConfigError(f"{path} exists; pass --force to replace it")
    public, secret = zmq.curve_keypair()
    _write_exclusive(secret_path, _certificate("secret", public, secret), 0o600, force)
    _write_exclusive(public_path, _certificate("public", public), 0o644, force)
    return public_path, secret_path


@dataclass(frozen=True)
class PeerKeys:
    """What :func:`keygen_peer` wrote."""

    #: the public key in the router's allow-list (``clients/`` or ``workers/[GROUP/]``)
    allowed: Path
    #: the folder to hand to the peer: ``router.key``, ``NAME.key`` and ``NAME.key_secret``
    folder: Path


def keygen_peer(
    out_dir: str | os.PathLike[str],
    name: str,
    role: str,
    *,
    group: str | None = None,
    operator: bool = False,
    force: bool = False,
) -> PeerKeys:
    """Make a client's or worker node's key pair in one step, as the router and the peer need
    it: the public key in the router's allow-list, and a folder for the peer,
    ``OUT/peers/NAME/``, with ``router.key`` and its pair (the secret mode 0600).

    A pair made by hand had to be split by hand, and a secret left in ``clients/`` sits in the
    router's own folder. The allow-list entry is written last: a failure half-way admits no
    one.

    Args:
        out_dir: the router's auth directory; ``OUT/router.key`` must exist.
        name: the peer's name (its ``--key`` / ``key=``).
        role: ``client`` or ``worker``.
        group: for a worker, the group folder (``workers/GROUP/``) it joins.
        operator: for a client, an operator's key (``clients/operators/``): it may also see
            the whole fleet and act on any task or worker.
        force: replace an existing pair instead of refusing.

    Raises:
        ConfigError: no router key yet, a file exists (without ``force``), the name is taken
            in another allow-list, or a file or folder cannot be written.
    """
    check_name(name)
    if name == "router":
        raise ConfigError("'router' is the router's own key: give the peer another name")
    root = Path(out_dir)
    allow_dir = root / ALLOW_LISTS[role]
    if group is not None:
        if role != WORKER:
            raise ConfigError("only workers form groups: --group goes with --worker")
        allow_dir /= check_name(group, "group name")
    if operator:
        if role != CLIENT:
            raise ConfigError("only clients are operators: --operator goes with --client")
        allow_dir /= OPERATORS
    allowed, folder = allow_dir / f"{name}.key", root / PEERS / name
    router_key = _router_public_file(root)
    _refuse_taken(root, name, allowed)
    if not force:
        for path in (allowed, folder / "router.key"):
            if os.path.lexists(path):
                raise ConfigError(f"{path} exists; pass --force to replace it")
    make_private_dirs(allow_dir)
    _check_directory(allow_dir)
    public, _ = keygen(folder, name, force=force)
    _write_exclusive(folder / "router.key", router_key, 0o644, force)
    _write_exclusive(allowed, public.read_bytes(), 0o644, force)
    return PeerKeys(allowed, folder)


def _router_public_file(root: Path) -> bytes:
    """The router's public key file, checked, to copy into a peer's folder."""
    path = root / "router.key"
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist: make the router's pair first, squall keygen --out {root} "
            "router"
        )
    _load_public(path)
    return path.read_bytes()


def _refuse_taken(root: Path, name: str, allowed: Path) -> None:
    """Refuse a name another allow-list already has: replacing the pair would leave the old
    public key admitted there, in its old role or group."""
    lists = [root / folder for folder in ALLOW_LISTS.values()]
    workers = root / ALLOW_LISTS[WORKER]
    if workers.is_dir():
        lists += sorted(p for p in workers.iterdir() if p.is_dir())
    for folder in lists:
        other = folder / f"{name}.key"
        if other != allowed and os.path.lexists(other):
            raise ConfigError(f"{other} already admits a key named {name}: remove it first")


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read key {path}: {exc}") from None
    if secret is None:
        raise ConfigError(f"{path} holds no secret key")
    return public, secret


def _load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read key {path}: {exc}") from None
    return public


@dataclass
class ServerKeys:
    """The router's key pair and who is allowed in, as what."""

    directory: Path
    public: bytes
    secret: bytes
    roles: dict[bytes, str] = field(default_factory=dict)
    #: worker key -> its group (the subfolder of workers/ it is in); keys directly in
    #: workers/ belong to no group
    groups: dict[bytes, str] = field(default_factory=dict)
    #: client keys in clients/operators/: they may also see the fleet (squall status, the
    #: dashboard, /metrics, events) and act on any task or worker (cancel, retry, drain)
    operators: set[bytes] = field(default_factory=set)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ServerKeys:
        """Read ``router.key_secret`` and the allow-lists; empty or missing lists admit no one.

        Raises:
            ConfigError: the router's key pair is missing or unreadable.
        """
        root = Path(directory)
        public, secret = _load_pair(root / "router.key_secret")
        keys = cls(root, public, secret)
        keys.reload()
        return keys

    def reload(self) -> None:
        """Read the allow-lists: ``clients/*.key``, ``workers/*.key`` and, for worker groups,
        ``workers/GROUP/*.key``."""
        roles: dict[bytes, str] = {}
        groups: dict[bytes, str] = {}
        operators: set[bytes] = set()
        clients = self.directory / "clients"
        if clients.is_dir():
            for path in sorted(clients.glob("*.key")):
                roles[_load_public(path)] = CLIENT
            for path in sorted((clients / OPERATORS).glob("*.key")):
                key = _load_public(path)
                roles[key] = CLIENT
                operators.add(key)
        workers = self.directory / "workers"
        if workers.is_dir():
            for path in sorted(workers.glob("*.key")):
                roles[_load_public(path)] = WORKER
            for folder in sorted(p for p in workers.iterdir() if p.is_dir()):
                for path in sorted(folder.glob("*.key")):
                    key = _load_public(path)
                    roles[key] = WORKER
                    groups[key] = folder.name
        self.roles, self.groups, self.operators = roles, groups, operators
        log.info(
            "keys loaded",
            clients=sum(r == CLIENT for r in roles.values()),
            operators=len(operators),
            workers=sum(r == WORKER for r in roles.values()),
            groups=sorted(set(groups.values())),
        )

    def role_of(self, user_id: str) -> str | None:
        """The role a ZAP user id stands for, if its key is still allowed."""
        role, _, key = user_id.partition(":")
        return role if self.roles.get(key.encode()) == role else None

    def group_of(self, user_id: str) -> str:
        """The worker group of a ZAP user id's key ("" for none)."""
        return self.groups.get(user_id.partition(":")[2].encode(), "")

    def has_group(self, name: str) -> bool:
        return name in self.groups.values()

    def is_operator(self, user_id: str) -> bool:
        """Whether a ZAP user id's key is an operator's (``clients/operators/``)."""
        role, _, key = user_id.partition(":")
        return role == CLIENT and key.encode() in self.operators

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE server (before it binds)."""
        socket.curve_server = True
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
        socket.zap_domain = b"squall"


def apply_client_keys(
    socket: zmq.Socket[Any], directory: str | os.PathLike[str], name: str
) -> None:
    """Make ``socket`` a CURVE client with ``DIR/NAME.key_secret``, trusting ``DIR/router.key``.

    Raises:
        ConfigError: a key file is missing or unreadable.
    """
    root = Path(directory)
    public, secret = _load_pair(root / f"{name}.key_secret")
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    socket.curve_serverkey = _load_public(root / "router.key")


class ZapHandler:
    """Answers ZAP requests for the router's socket, from the router's poll loop."""

    #: seconds between two warnings about refused keys; refusals in between are counted
    WARN_EVERY = 5.0

    def __init__(self, context: zmq.Context[Any], keys: ServerKeys) -> None:
        self.keys = keys
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)
        self._last_warning = -self.WARN_EVERY
        self._unreported = 0

    def handle(self) -> None:
        """Answer every request waiting (call when the socket is readable)."""
        while True:
            try:
                request = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.socket.send_multipart(self._answer(request))

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", b"", b"400", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        if mechanism != b"CURVE" or len(credentials) != 1:
            return [version, request_id, b"400", b"CURVE only", b"", b""]
        key = zmq.utils.z85.encode(credentials[0])
        role = self.keys.roles.get(key)
        if role is None:
            self._warn_refused(address, key)
            return [version, request_id, b"400", b"key not allowed", b"", b""]
        return [version, request_id, b"200", b"OK", f"{role}:{key.decode()}".encode(), b""]

    def _warn_refused(self, address: bytes, key: bytes) -> None:
        """One line per refused key at most every WARN_EVERY seconds: a flood of handshakes
        must not flood the log."""
        self._unreported += 1
        now = time.monotonic()
        if now - self._last_warning < self.WARN_EVERY:
            return
        log.warning(
            "connection refused: key not allowed",
            address=address.decode(errors="replace"),
            key=key.decode(),  # Z85, as in the key files
            refused=self._unreported,
        )
        self._last_warning, self._unreported = now, 0

    def close(self) -> None:
        self.socket.close(linger=0)
