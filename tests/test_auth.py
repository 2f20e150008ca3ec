"""CurveZMQ: only listed keys get in, each only in its role; revoked keys are cut off."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

import squall
from squall.auth import keygen

pytestmark = pytest.mark.timeout(120)


def touch_marker(path: str) -> str:
    Path(path).write_text("ran")
    return "ran"


def test_keygen_writes_a_private_secret(tmp_path: Path) -> None:
    public, secret = keygen(tmp_path, "someone")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert "public-key" in public.read_text() and "secret-key" in secret.read_text()


def test_listed_keys_work(secured) -> None:
    _, _, alice = secured
    assert alice.submit(abs, -9).result(timeout=30) == 9


@pytest.mark.parametrize("who", ["no key", "unlisted key", "wrong router key"])
def test_strangers_never_get_a_task_through(secured, tmp_path: Path, who: str) -> None:
    cluster, keys, alice = secured
    marker = tmp_path / f"canary-{who.replace(' ', '-')}"
    if who == "no key":
        options = {}
    elif who == "unlisted key":
        options = {"auth": str(keys["mallory"]), "key": "mallory"}
    else:
        fake = tmp_path / "fake-router"
        keygen(fake, "router")
        shutil.copy(keys["bob"] / "bob.key_secret", fake / "bob.key_secret")
        options = {"auth": str(fake), "key": "bob"}
    # A refused key fails at once, naming it (libzmq reports the failed handshake); a client
    # with no key at all cannot tell a CURVE router from a silent one and times out.
    expected = squall.StartupError if who == "no key" else squall.Refused
    started = time.monotonic()
    with pytest.raises(expected) as refusal:
        squall.Executor(cluster.address, connect_timeout=5, **options)
    if who != "no key":
        assert time.monotonic() - started < 2.0
        assert f"key {options['key']!r}" in str(refusal.value)
    time.sleep(0.5)
    assert not marker.exists()  # no canary task could even be sent
    assert alice.submit(touch_marker, str(tmp_path / "alice")).result(timeout=30) == "ran"


def test_keys_only_work_in_their_role(secured, tmp_path: Path) -> None:
    cluster, keys, alice = secured
    # A client key used by a worker: it never registers, never receives a task.
    impostor = cluster.start(
        "worker",
        "--connect",
        cluster.address,
        "--processes",
        "1",
        "--auth",
        str(keys["bob"]),
        "--key",
        "bob",
    )
    time.sleep(2)
    assert alice.stats()["workers"] == 1
    assert alice.stats()["refused"] > 0
    impostor.stop()
    # A worker key used by a client: refused at HELLO, with a clear error.
    with pytest.raises(squall.SquallError, match="HELLO is not allowed for your key"):
        squall.Executor(cluster.address, auth=str(keys["node2"]), key="node2", connect_timeout=10)
    assert alice.submit(abs, -3).result(timeout=30) == 3


def test_a_revoked_key_is_cut_off_and_others_go_on(secured, tmp_path: Path) -> None:
    cluster, keys, alice = secured
    with squall.Executor(
        cluster.address, auth=str(keys["bob"]), key="bob", connect_timeout=10
    ) as bob:
        assert bob.submit(abs, -1).result(timeout=30) == 1
        (keys["router"] / "clients" / "bob.key").unlink()
        os.kill(cluster.router.pid, signal.SIGHUP)
        time.sleep(1.0)
        late = bob.submit(touch_marker, str(tmp_path / "bob-after"))
        time.sleep(1.5)
        assert not late.done() and not (tmp_path / "bob-after").exists()
        assert alice.submit(abs, -2).result(timeout=30) == 2
        bob.shutdown(wait=False, cancel_futures=True)


def test_a_non_loopback_bind_needs_auth(tmp_path: Path) -> None:
    import subprocess
    import sys

    ran = subprocess.run(
        [sys.executable, "-m", "squall", "router", "--bind", "tcp://0.0.0.0:5557"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode != 0
    assert "refusing to listen on tcp://0.0.0.0:5557 without authentication" in ran.stderr
    assert "--auth" in ran.stderr


def test_sighup_does_not_leave_the_router_spinning(secured) -> None:
    import psutil

    cluster, _, alice = secured
    os.kill(cluster.router.pid, signal.SIGHUP)
    time.sleep(0.5)
    router = psutil.Process(cluster.router.pid)
    router.cpu_percent(None)
    time.sleep(1.0)
    assert router.cpu_percent(None) < 50, "the router busy-loops after a signal"
    assert alice.submit(abs, -6).result(timeout=30) == 6
