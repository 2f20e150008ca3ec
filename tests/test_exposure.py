"""Who else on this machine (or network) can reach a router, a worker or a secret key.

The attacks of issue 10, items 5, 7, 9 and 10 (``is_loopback``), mounted for real: a router
without ``--auth`` must not listen where another local user can reach it, a worker or client
must not talk to a remote router without keys, and ``keygen`` must never leave a secret
readable, not even for an instant. The second local account is a throwaway user created by
the test (we run as root) and removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
import zmq.auth

import squall
from conftest import Cluster, Proc, free_port, router_stats, wait_for
from squall.auth import keygen
from squall.config import WorkerConfig, bind_router_socket, check_listen_policy, is_loopback
from squall.errors import SquallError

pytestmark = pytest.mark.timeout(60)

#: nothing listens there and packets to it go nowhere: a refusal must come before any connect
UNREACHABLE = "tcp://192.0.2.1:5555"


def _squall(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squall", *args], capture_output=True, text=True, timeout=timeout
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (SquallError: exit status 1)."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _wait_for_router(router: Proc, address: str) -> None:
    def up() -> bool:
        assert router.popen.poll() is None, f"router exited: {router.output()}"
        return router_stats(address, timeout=0.5) is not None

    wait_for(up, 15, "router did not answer")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- is_loopback -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.0.0.1:5555",
        "tcp://127.1.2.3:5555",
        "tcp://[::1]:5555",
        "tcp://::1:5555",
        "tcp://localhost:5555",
        "tcp://LOCALHOST:5555",
        "tcp://[::ffff:127.0.0.1]:5555",
        "tcp://127.0.0.1:*",
        "ipc:///tmp/squall/router",
        "inproc://router",
    ],
)
def test_loopback_addresses(address: str) -> None:
    assert is_loopback(address)


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.lan:5555",
        "tcp://127.0.0.1.evil.com:5555",
        "tcp://127.example:5555",
        "tcp://localhost.evil.com:5555",
        "tcp://*:5555",
        "tcp://0.0.0.0:5555",
        "tcp://[::]:5555",
        "tcp://10.255.255.1:5555",
        "tcp://192.0.2.1:5555",
        "tcp://eth0:5555",
        "tcp://router-host:5555",
        "udp://127.0.0.1:5555",
    ],
)
def test_non_loopback_addresses(address: str) -> None:
    assert not is_loopback(address)


# -- the router's listening policy ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address, auth, insecure, allowed",
    [
        ("tcp://127.0.0.1:1", None, False, False),
        ("tcp://0.0.0.0:1", None, False, False),
        ("tcp://127.0.0.1:1", None, True, True),
        ("tcp://0.0.0.0:1", None, True, True),
        ("tcp://0.0.0.0:1", "keys", False, True),
        ("ipc://@squall", None, False, False),
        ("ipc://@squall", None, True, False),
        ("ipc://@squall", "keys", False, True),
        ("ipc:///tmp/squall/router", None, False, True),
        ("inproc://router", None, False, True),
    ],
)
def test_listen_policy(address: str, auth: str | None, insecure: bool, allowed: bool) -> None:
    if allowed:
        check_listen_policy(address, auth, insecure)
    else:
        with pytest.raises(SquallError, match="without authentication"):
            check_listen_policy(address, auth, insecure)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "localhost", "127.lan"])
def test_router_refuses_tcp_without_auth_or_insecure(host: str) -> None:
    address = f"tcp://{host}:{free_port()}"
    line = _one_line(_squall("router", "--bind", address))
    assert f"refusing to listen on {address} without authentication" in line
    assert "--auth DIR" in line and "squall keygen" in line
    assert "ipc://" in line and "--insecure" in line
    assert "127.0.0.1 or" not in line  # loopback is not offered as the safe choice
    who = "any local user" if host in ("127.0.0.1", "localhost") else "anyone who can reach it"
    assert who in line


@pytest.mark.parametrize("extra", [[], ["--insecure"]])
def test_router_refuses_an_abstract_ipc_name_without_auth(extra: list[str]) -> None:
    name = f"ipc://@squall-{secrets.token_hex(4)}"
    line = _one_line(_squall("router", "--bind", name, *extra))
    assert f"refusing to listen on {name} without authentication" in line
    assert "ipc:// path" in line and "--auth DIR" in line


def test_insecure_loopback_router_says_any_local_user_can_run_code(cluster: Cluster) -> None:
    cluster.start_router()  # --insecure
    assert cluster.router is not None
    wait_for(lambda: "ANY LOCAL USER can run code" in cluster.router.output(), 10, "warning")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that every user may traverse (pytest's own are 0700), so
    that only the modes squall sets decide who gets in."""
    path = Path(tempfile.mkdtemp(prefix="squall-exposure-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_router_on_an_ipc_path_makes_the_socket_0600_and_its_directory_0700(
    cluster: Cluster, shared_dir: Path
) -> None:
    """Even under a umask of 0, which would otherwise leave both open to everyone."""
    sock = shared_dir / "missing" / "run" / "router.sock"
    address = f"ipc://{sock}"
    _wait_for_router(cluster.start("router", "--bind", address, umask=0), address)
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert _mode(sock) == 0o600
    assert _mode(sock.parent) == 0o700 and _mode(sock.parent.parent) == 0o700


def test_bind_router_socket_under_a_permissive_umask(shared_dir: Path) -> None:
    sock = shared_dir / "new" / "router.sock"
    previous = os.umask(0)
    try:
        with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router:
            router.linger = 0
            endpoint = bind_router_socket(router, f"ipc://{sock}")
            assert endpoint == f"ipc://{sock}"
            assert _mode(sock) == 0o600 and _mode(sock.parent) == 0o700
            assert os.umask(0) == 0, "the umask was put back"
    finally:
        os.umask(previous)


def test_bind_router_socket_tcp_returns_the_real_port() -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router:
        router.linger = 0
        endpoint = bind_router_socket(router, "tcp://127.0.0.1:*")
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":*")


# -- workers and clients talking to a remote router without keys --------------------------------


def test_worker_refuses_a_remote_router_without_auth() -> None:
    line = _one_line(_squall("worker", "--connect", "tcp://10.255.255.1:5555", timeout=15))
    assert "refusing to connect to tcp://10.255.255.1:5555 without authentication" in line
    assert "--auth DIR" in line and "--insecure" in line


def test_worker_config_enforces_it_too() -> None:
    with pytest.raises(SquallError, match="refusing to connect"):
        WorkerConfig("tcp://127.lan:5555")
    assert WorkerConfig("tcp://10.255.255.1:5555", insecure=True).insecure
    assert WorkerConfig("tcp://10.255.255.1:5555", auth="keys").auth == "keys"
    assert WorkerConfig("tcp://127.0.0.1:5555").connect == "tcp://127.0.0.1:5555"


def test_insecure_worker_starts_with_a_warning(cluster: Cluster) -> None:
    node = cluster.start("worker", "--connect", UNREACHABLE, "--insecure", "--processes", "1")
    wait_for(lambda: "connecting WITHOUT authentication" in node.output(), 15, "warning")
    assert node.popen.poll() is None


@pytest.mark.parametrize("address", [UNREACHABLE, "tcp://10.255.255.1:5555", "tcp://127.lan:1"])
def test_executor_refuses_a_remote_router_without_auth(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SQUALL_AUTH", raising=False)
    started = time.monotonic()
    with pytest.raises(SquallError, match="without authentication") as refused:
        squall.Executor(address, connect_timeout=30)
    assert time.monotonic() - started < 2, "refused at once, before connecting"
    message = str(refused.value)
    assert "\n" not in message and "insecure=True" in message and "auth=DIR" in message


# -- keygen --------------------------------------------------------------------------------------


def test_keygen_secret_0600_in_a_new_0700_directory(tmp_path: Path) -> None:
    out = tmp_path / "a" / "keys"
    public, secret = keygen(out, "router")
    assert _mode(secret) == 0o600 and _mode(public) == 0o644
    assert _mode(out) == 0o700 and _mode(out.parent) == 0o700
    pub, sec = zmq.auth.load_certificate(secret)
    assert sec is not None and zmq.auth.load_certificate(public) == (pub, None)
    assert zmq.curve_public(sec) == pub


def test_keygen_refuses_to_overwrite_a_pair(tmp_path: Path) -> None:
    public, secret = keygen(tmp_path, "router")
    before = secret.read_bytes()
    with pytest.raises(SquallError, match="exists; pass --force to replace it"):
        keygen(tmp_path, "router")
    assert secret.read_bytes() == before
    public.unlink()  # half a pair is refused too: the secret would be replaced
    with pytest.raises(SquallError, match="exists"):
        keygen(tmp_path, "router")


def test_keygen_does_not_write_through_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys" / "router.key_secret").symlink_to(target)
    with pytest.raises(SquallError, match="exists"):
        keygen(tmp_path / "keys", "router")
    assert not target.exists()


def test_keygen_refuses_a_directory_others_may_write(shared_dir: Path) -> None:
    shared_dir.chmod(0o777)
    with pytest.raises(SquallError, match="writable by other users"):
        keygen(shared_dir, "router")


def test_keygen_force_replaces_the_pair_atomically(tmp_path: Path) -> None:
    public, secret = keygen(tmp_path, "router")
    old = zmq.auth.load_certificate(secret)
    keygen(tmp_path, "router", force=True)
    new = zmq.auth.load_certificate(secret)
    assert new != old and zmq.auth.load_certificate(public) == (new[0], None)
    assert _mode(secret) == 0o600 and _mode(public) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["router.key", "router.key_secret"]


def test_keygen_cli_refuses_then_force_replaces(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    assert _squall("keygen", "--out", str(out), "alice").returncode == 0
    before = (out / "alice.key_secret").read_bytes()
    line = _one_line(_squall("keygen", "--out", str(out), "alice"))
    assert line.endswith("alice.key_secret exists; pass --force to replace it")
    forced = _squall("keygen", "--out", str(out), "alice", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "alice.key_secret").read_bytes() != before


# -- a second local account ----------------------------------------------------------------------


@dataclass
class OtherUser:
    """A throwaway local account, and how to run Python (with squall and zmq) as it."""

    name: str
    uid: int
    gid: int
    python: list[str]
    env: dict[str, str]

    def popen(self, code: str, *args: str, **options: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.python, "-c", code, *args],
            user=self.uid,
            group=self.gid,
            extra_groups=[],  # drop root's groups
            env=self.env,
            cwd="/",
            text=True,
            **options,
        )

    def run(self, code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        with self.popen(code, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _pythons() -> Iterator[tuple[list[str], dict[str, str]]]:
    """Ways another user might run Python with squall: this interpreter (it may live in a
    directory only root can enter, e.g. pyenv under /root), then a system Python of the same
    version given this environment's site-packages and squall's source on PYTHONPATH."""
    base = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"}
    yield [sys.executable], base
    paths = [sysconfig.get_paths()["purelib"], str(Path(squall.__file__).parents[1])]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(candidate):
            yield [candidate], {**base, "PYTHONPATH": ":".join(paths)}


@pytest.fixture(scope="module")
def other_user() -> Iterator[OtherUser]:
    """Create a local account ``sq<hex>`` (no home), find a Python it can run, remove it after."""
    if os.geteuid() != 0:
        pytest.skip("a second local account needs root to create it (useradd)")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel not found: cannot create a second local account")
    name = f"sq{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    entry = pwd.getpwnam(name)
    try:
        found = None
        for python, env in _pythons():
            user = OtherUser(name, entry.pw_uid, entry.pw_gid, python, env)
            try:
                probe = user.run("import os, zmq, squall.protocol; print(os.getuid())")
            except OSError:  # cannot even execute it, e.g. behind /root (0700)
                continue
            if probe.returncode == 0 and probe.stdout.strip() == str(entry.pw_uid):
                found = user
                break
        if found is None:
            pytest.skip(f"user {name} cannot run a Python with squall and zmq installed")
        yield found
    finally:
        for proc in psutil.process_iter(["uids"]):  # only ours: this account is brand new
            uids = proc.info["uids"]
            if uids and uids.real == entry.pw_uid:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


STATS_PROBE = """
import os, sys, zmq
from squall import protocol
address, path = sys.argv[1], sys.argv[2]
print("visible" if os.path.exists(path) else "invisible", flush=True)
with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
    sock.linger = 0
    sock.connect(address)
    sock.send_multipart(protocol.encode_stats_request())
    print("REPLY" if sock.poll(2000) else "NO REPLY", flush=True)
"""


def test_another_user_cannot_reach_a_router_on_an_ipc_path(
    cluster: Cluster, shared_dir: Path, other_user: OtherUser
) -> None:
    """The socket's own mode is the only barrier here: its directory is open to all, and the
    router runs under a umask of 0. The owner is served; the other user is not, until the
    socket is opened up (which shows the probe would have seen a reply)."""
    sock = shared_dir / "router.sock"
    address = f"ipc://{sock}"
    _wait_for_router(cluster.start("router", "--bind", address, umask=0), address)

    probe = other_user.run(STATS_PROBE, address, str(sock))
    assert probe.stdout.split() == ["visible", "NO", "REPLY"], probe.stdout + probe.stderr
    assert router_stats(address) is not None  # the owner still gets in

    sock.chmod(0o666)  # the control: what a world-writable socket would give away
    probe = other_user.run(STATS_PROBE, address, str(sock))
    assert probe.stdout.split() == ["visible", "REPLY"], probe.stdout + probe.stderr


RACE_READER = """
import os, sys, time
paths = sys.argv[1:]
print("ready", flush=True)
for path in paths:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except PermissionError:
            break  # the file (or its directory) is private: on to the next
        data = b""
        until = time.monotonic() + 0.5
        while b"secret-key" not in data and time.monotonic() < until:
            data = os.pread(fd, 65536, 0)  # the writer may not be done yet
        os.close(fd)
        print("LEAK", path, len(data), flush=True)
        break
print("done", flush=True)
"""


def keygen_race(
    user: OtherUser, base: Path, make_pair: Callable[[Path, str], object], rounds: int = 20
) -> list[str]:
    """The other user spins on opening each secret path while the owner runs ``make_pair``
    into fresh directories; return the paths it read something from."""
    dirs = [base / f"keys{i}" for i in range(rounds)]
    paths = [str(d / "router.key_secret") for d in dirs]
    with user.popen(RACE_READER, *paths, stdout=subprocess.PIPE) as reader:
        assert reader.stdout is not None
        try:
            assert reader.stdout.readline().strip() == "ready"
            for directory in dirs:
                make_pair(directory, "router")
                time.sleep(0.03)  # let the reader move on to the next path
            out, _ = reader.communicate(timeout=30)
        finally:
            if reader.poll() is None:
                reader.kill()
    assert out.splitlines()[-1] == "done", out
    return [line for line in out.splitlines() if line.startswith("LEAK")]


def test_another_user_never_reads_a_secret_while_keygen_writes_it(
    shared_dir: Path, other_user: OtherUser
) -> None:
    leaks = keygen_race(other_user, shared_dir, keygen)
    assert leaks == []
    assert all(_mode(d) == 0o700 for d in shared_dir.iterdir())


def test_another_user_reading_a_public_key_is_fine(shared_dir: Path, other_user: OtherUser) -> None:
    """The control for the race: the reader does read what it is allowed to."""
    out = shared_dir / "public"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    public, _ = keygen(out, "router")
    ran = other_user.run("import sys; print(open(sys.argv[1]).read())", str(public))
    assert "public-key" in ran.stdout and "secret-key" not in ran.stdout, ran.stderr
