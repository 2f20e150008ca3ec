"""Keys as the README says (issue 12, items 1 and 5).

The README's "Several machines" commands are run as written: only the router's host and port
change, to a free loopback port. ``squall keygen --client/--worker`` makes each peer's folder in
one step and never leaves a secret where the router keeps public keys; the router names a
refused key in Z85, as the key files hold it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from conftest import Cluster, free_port, wait_for

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
README_HOST = "tcp://router-host:5555"
README_BIND = "tcp://0.0.0.0:5555"


def several_machines() -> tuple[list[str], str]:
    """The README section's shell commands (``squall ...`` lines) and its Python block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Several machines\n", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert shell and python, "the section lost its code blocks"
    commands = [line for line in shell.group(1).splitlines() if line.startswith("squall ")]
    return commands, python.group(1)


def _env() -> dict[str, str]:
    """The environment a user has after installing: ``squall`` on the PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, shell=True, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=60
    )


class Started:
    """Processes started from README lines, stopped by PID (TERM, then KILL)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, command: str) -> subprocess.Popen[bytes]:
        log = self.cwd / f"proc-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                shlex.split(command),
                cwd=self.cwd,
                env={**_env(), "SQUALL_HEARTBEAT": "0.2", "SQUALL_LIVENESS": "1.0"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')}" for _, log in self.procs
        )

    def stop(self) -> None:
        for proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    procs = Started(tmp_path)
    yield procs
    procs.stop()


CLIENT = """
import sys
import squall
{with_line}
    print(ex.submit(lambda x: x * 2, 21).result(timeout=60), flush=True)
"""


def test_the_several_machines_steps_run_as_written(tmp_path: Path, started: Started) -> None:
    commands, python = several_machines()
    keygens = [c for c in commands if c.startswith("squall keygen ")]
    routers = [c for c in commands if c.startswith("squall router ")]
    workers = [c for c in commands if c.startswith("squall worker ")]
    assert keygens and len(routers) == 1 and workers

    printed = []
    for command in keygens:
        ran = run(command, tmp_path)
        assert ran.returncode == 0, f"{command}: {ran.stderr}"
        printed.append(ran.stdout)
    keys = tmp_path / "keys"
    # No secret where the router keeps the keys it admits; each peer's folder is complete.
    assert not list((keys / "clients").rglob("*key_secret"))
    assert not list((keys / "workers").rglob("*key_secret"))
    router_public = zmq.auth.load_certificate(keys / "router.key")[0]
    for folder in (keys / "peers").iterdir():
        name = folder.name
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["router.key", f"{name}.key", f"{name}.key_secret"]
        )
        assert zmq.auth.load_certificate(folder / "router.key")[0] == router_public
        assert oct(os.stat(folder / f"{name}.key_secret").st_mode & 0o777) == "0o600"
    # The worker commands use the folders keygen printed.
    for command in workers:
        assert any(
            command.replace(README_HOST, "ADDR").removeprefix("squall worker ") in out
            for out in printed
        ), (command, printed)

    address = f"tcp://127.0.0.1:{free_port()}"
    router = started.start(routers[0].replace(README_BIND, address))
    for command in workers:
        started.start(command.replace(README_HOST, address))

    with_line = next(line for line in python.splitlines() if "squall.Executor(" in line)
    assert README_HOST in with_line
    script = CLIENT.format(with_line=with_line.replace(README_HOST, address))
    client = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert router.poll() is None, started.logs()
    assert client.returncode == 0, client.stderr + started.logs()
    assert client.stdout.strip() == "42"


def _squall(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squall", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _refused(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    assert result.returncode == status, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_peer_keys_refuse_to_overwrite_without_force(tmp_path: Path) -> None:
    assert _squall("keygen", "--out", "keys", "router", cwd=tmp_path).returncode == 0
    assert _squall("keygen", "--out", "keys", "--client", "alice", cwd=tmp_path).returncode == 0
    secret = tmp_path / "keys/peers/alice/alice.key_secret"
    before = secret.read_bytes()
    line = _refused(_squall("keygen", "--out", "keys", "--client", "alice", cwd=tmp_path))
    assert line.endswith("exists; pass --force to replace it")
    assert secret.read_bytes() == before
    # A name another allow-list admits is refused even with --force: its old key would stay in.
    line = _refused(
        _squall("keygen", "--out", "keys", "--worker", "alice", "--force", cwd=tmp_path)
    )
    assert "clients/alice.key already admits a key named alice" in line
    forced = _squall("keygen", "--out", "keys", "--client", "alice", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert secret.read_bytes() != before
    new_public = zmq.auth.load_certificate(secret)[0]
    assert zmq.auth.load_certificate(tmp_path / "keys/clients/alice.key")[0] == new_public
    assert zmq.auth.load_certificate(secret.with_name("alice.key"))[0] == new_public


def test_a_peer_needs_the_router_pair_first(tmp_path: Path) -> None:
    line = _refused(_squall("keygen", "--out", "keys", "--worker", "node1", cwd=tmp_path))
    assert "router.key does not exist" in line and "squall keygen --out keys router" in line
    assert not (tmp_path / "keys" / "workers").exists()


def test_a_worker_group_gets_its_own_folder(tmp_path: Path) -> None:
    assert _squall("keygen", "--out", "keys", "router", cwd=tmp_path).returncode == 0
    made = _squall("keygen", "--out", "keys", "--worker", "node7", "--group", "gpu", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (tmp_path / "keys/workers/gpu").iterdir()) == ["node7.key"]
    assert (tmp_path / "keys/peers/node7/node7.key_secret").exists()
    from squall.auth import ServerKeys

    keys = ServerKeys.load(tmp_path / "keys")
    public = zmq.auth.load_certificate(tmp_path / "keys/workers/gpu/node7.key")[0]
    assert keys.roles == {public: "worker"} and keys.groups == {public: "gpu"}


# -- item 5: a refused key in the router's log -----------------------------------------------


PROBE = textwrap.dedent("""
    import sys
    import squall
    try:
        squall.Executor(sys.argv[1], auth=sys.argv[2], key="mallory", connect_timeout=2)
    except squall.SquallError:
        pass
""")


def test_the_router_names_a_refused_key_in_z85(cluster: Cluster, tmp_path: Path) -> None:
    keys, mallory = tmp_path / "keys", tmp_path / "mallory"
    assert _squall("keygen", "--out", str(keys), "router", cwd=tmp_path).returncode == 0
    assert _squall("keygen", "--out", str(mallory), "mallory", cwd=tmp_path).returncode == 0
    (mallory / "router.key").write_bytes((keys / "router.key").read_bytes())
    address = f"tcp://127.0.0.1:{free_port()}"
    router = cluster.start("router", "--bind", address, "--auth", str(keys), "--log-json")
    wait_for(lambda: "router listening" in router.output(), 15, "router listening")

    subprocess.run([sys.executable, "-c", PROBE, address, str(mallory)], timeout=60)

    def refusal() -> dict[str, Any] | None:
        for line in router.output().splitlines():
            event = json.loads(line)
            if event["event"].startswith("connection refused"):
                return event
        return None

    event = wait_for(refusal, 15, "a refusal logged")
    assert event["key"] == zmq.auth.load_certificate(mallory / "mallory.key")[0].decode()
    assert "b'" not in json.dumps(event)
