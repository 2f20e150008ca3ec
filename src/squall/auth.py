"""CurveZMQ keys and the router's ZAP handler: who may connect, and as what.

An auth directory on the router holds its own key pair and two allow-lists of public keys::

    keys/router.key, keys/router.key_secret     squall keygen --out keys router
    keys/clients/*.key                           may submit tasks
    keys/workers/*.key                           may register as workers and run them

A client or worker holds ``router.key`` (the router's public key) and its own key pair
(``client.key_secret`` or ``worker.key_secret`` by default, another name with ``key=``).

The ZAP handler answers ZeroMQ's authentication requests inside the router's own poll loop (no
thread, nothing that blocks): a key from ``clients/`` is admitted with user id
``client:<key>``, one from ``workers/`` with ``worker:<key>``, anything else is refused before a
single message gets through. The router then checks every message against its sender's role.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85

from squall.errors import SquallError
from squall.log import get_logger

log = get_logger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
CLIENT, WORKER = "client", "worker"


def keygen(out_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ZeroMQ's certificate format."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(out_dir, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SquallError(f"cannot read key {path}: {exc}") from None
    if secret is None:
        raise SquallError(f"{path} holds no secret key")
    return public, secret


def _load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SquallError(f"cannot read key {path}: {exc}") from None
    return public


@dataclass
class ServerKeys:
    """The router's key pair and who is allowed in, as what."""

    directory: Path
    public: bytes
    secret: bytes
    roles: dict[bytes, str] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ServerKeys:
        """Read ``router.key_secret`` and the allow-lists; empty or missing lists admit no one.

        Raises:
            SquallError: the router's key pair is missing or unreadable.
        """
        root = Path(directory)
        public, secret = _load_pair(root / "router.key_secret")
        keys = cls(root, public, secret)
        keys.reload()
        return keys

    def reload(self) -> None:
        roles: dict[bytes, str] = {}
        for role, sub in ((CLIENT, "clients"), (WORKER, "workers")):
            folder = self.directory / sub
            if folder.is_dir():
                for path in sorted(folder.glob("*.key")):
                    roles[_load_public(path)] = role
        self.roles = roles
        log.info(
            "keys loaded",
            clients=sum(r == CLIENT for r in roles.values()),
            workers=sum(r == WORKER for r in roles.values()),
        )

    def role_of(self, user_id: str) -> str | None:
        """The role a ZAP user id stands for, if its key is still allowed."""
        role, _, key = user_id.partition(":")
        return role if self.roles.get(key.encode()) == role else None

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
        SquallError: a key file is missing or unreadable.
    """
    root = Path(directory)
    public, secret = _load_pair(root / f"{name}.key_secret")
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    socket.curve_serverkey = _load_public(root / "router.key")


class ZapHandler:
    """Answers ZAP requests for the router's socket, from the router's poll loop."""

    def __init__(self, context: zmq.Context[Any], keys: ServerKeys) -> None:
        self.keys = keys
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)

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
            log.warning("connection refused: key not allowed", address=address.decode(), key=key)
            return [version, request_id, b"400", b"key not allowed", b"", b""]
        return [version, request_id, b"200", b"OK", f"{role}:{key.decode()}".encode(), b""]

    def close(self) -> None:
        self.socket.close(linger=0)
