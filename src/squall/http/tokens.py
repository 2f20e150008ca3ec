"""Bearer tokens for the gateway, and the HMAC signatures of webhooks.

A token is made once (``squall token create NAME --out DIR``): its secret is printed, and
``DIR/NAME.token`` keeps only its SHA-256, so the directory leaks no secret. Signatures follow
the scheme Stripe made familiar: ``Squall-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"t.body">``; the time in the signed bytes lets a receiver refuse a replayed old delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from squall.errors import ConfigError

#: how old a signature's time may be before a receiver refuses it, seconds
TOLERANCE = 300
TOKEN_SUFFIX = ".token"
#: a token directory's webhook secret file (used when --webhook-secret is not given)
WEBHOOK_SECRET_FILE = "webhook.secret"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(name: str, directory: str, force: bool = False) -> str:
    """Make token ``name`` in ``directory`` (0700) and return its secret (shown once).

    Raises:
        ConfigError: a bad name, or a token of that name exists (without ``force``).
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"a token name has letters, digits and -_. only, not {name!r}")
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{name}{TOKEN_SUFFIX}"
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: pass --force to replace that token")
    secret = "sqt_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(_digest(secret) + "\n")
    webhook = folder / WEBHOOK_SECRET_FILE
    if not webhook.exists():  # a webhook secret beside the tokens, made once
        fd = os.open(webhook, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    return secret


class Tokens:
    """The tokens a gateway accepts: the digests in a token directory."""

    def __init__(self, directory: str) -> None:
        folder = Path(directory)
        if not folder.is_dir():
            raise ConfigError(f"--tokens {directory}: no such directory")
        self._digests = {
            path.read_text().strip(): path.name[: -len(TOKEN_SUFFIX)]
            for path in folder.glob(f"*{TOKEN_SUFFIX}")
        }
        if not self._digests:
            raise ConfigError(
                f"--tokens {directory} holds no token: make one with "
                f"squall token create NAME --out {directory}"
            )
        secret_file = folder / WEBHOOK_SECRET_FILE
        self.webhook_secret = secret_file.read_text().strip() if secret_file.exists() else None

    def name_of(self, authorization: str | None) -> str | None:
        """The name of the token an ``Authorization: Bearer ...`` header carries; None if
        it carries none that is known. (A lookup by digest: no secret is compared.)"""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        return self._digests.get(_digest(authorization[len("Bearer ") :].strip()))


def sign(secret: str, body: bytes, at: float | None = None) -> str:
    """The ``Squall-Signature`` header for ``body`` at Unix time ``at`` (now)."""
    stamp = str(int(time.time() if at is None else at))
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    return f"t={stamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance: float = TOLERANCE) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, at most ``tolerance`` s ago."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        stamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - stamp) > tolerance:
        return False
    expected = sign(secret, body, stamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))
