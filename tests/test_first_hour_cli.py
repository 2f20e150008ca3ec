"""Every option is checked when the command line is parsed (issue 12, items 6 and 8).

A bad flag ends in one line on stderr and argparse's exit status 2, before anything starts: no
traceback, no router spinning on ``--heartbeat -1``. IPv6 addresses work. ``--help``, the
README's command-line block and the package metadata say what there is.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from conftest import Cluster, wait_for
from squall import protocol
from squall.config import is_ipv6, prepare_socket, validate_address
from squall.errors import SquallError

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
ADDR = "tcp://127.0.0.1:5555"  # never bound: every command below must stop before that


def squall_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squall", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


BAD_FLAGS = [
    (["router", "--bind", "tcp://127.0.0.1:99999", "--insecure"], "port 99999 is out of range"),
    (["router", "--bind", "tcp://localhost:25556x", "--insecure"], "'25556x' is not a port"),
    (["router", "--bind", "tcp://127.0.0.1", "--insecure"], "has no port"),
    (["router", "--bind", "tcp://bad host:5555", "--insecure"], "white space"),
    (["router", "--bind", "tcp://a/b:5555", "--insecure"], "not a host name"),
    (["router", "--bind", "tcp://[::zz]:5555", "--insecure"], "not an IPv6 address"),
    (["router", "--bind", "127.0.0.1:5555", "--insecure"], "not a ZeroMQ address"),
    (["router", "--bind", "ipc://", "--insecure"], "names no ipc endpoint"),
    (["router", "--bind", ADDR, "--insecure", "--heartbeat", "-1"], "--heartbeat"),
    (["router", "--bind", ADDR, "--insecure", "--heartbeat", "0"], "--heartbeat"),
    (["router", "--bind", ADDR, "--insecure", "--heartbeat", "nan"], "--heartbeat"),
    (["router", "--bind", ADDR, "--insecure", "--heartbeat", "soon"], "--heartbeat"),
    (["router", "--bind", ADDR, "--insecure", "--liveness", "-3"], "--liveness"),
    (["router", "--bind", ADDR, "--insecure", "--liveness", "0.5"], "longer than --heartbeat"),
    (
        ["router", "--bind", ADDR, "--insecure", "--heartbeat", "2", "--liveness", "2"],
        "longer than --heartbeat",
    ),
    (["router", "--bind", ADDR, "--insecure", "--log-level", "loud"], "invalid choice: 'loud'"),
    (["router", "--bind", ADDR, "--insecure", "--max-worker-deaths", "0"], "--max-worker-deaths"),
    (["router", "--bind", ADDR, "--insecure", "--max-queued", "-1"], "--max-queued"),
    (["router", "--bind", ADDR, "--insecure", "--max-backlog", "many"], "--max-backlog"),
    (["router", "--bind", ADDR, "--insecure", "--max-message-size", "0"], "--max-message-size"),
    (["router", "--bind", ADDR, "--insecure", "--max-client-bytes", "1q"], "--max-client-bytes"),
    (["router", "--bind", ADDR, "--insecure", "--max-held-bytes", "0"], "--max-held-bytes"),
    (["router", "--bind", ADDR, "--insecure", "--max-recent-bytes", "-5"], "--max-recent-bytes"),
    (["router", "--bind", ADDR, "--insecure", "--max-body-size", "99999999t"], "too large"),
    (["router", "--bind", ADDR, "--insecure", "--max-backlog-bytes", "0"], "--max-backlog-bytes"),
    (["router", "--bind", ADDR, "--auth", "/nonexistent/keys"], "is not a directory"),
    (["worker", "--connect", "tcp://127.0.0.1:99999"], "port 99999 is out of range"),
    (["worker", "--connect", "tcp://localhost:25556x"], "'25556x' is not a port"),
    (["worker", "--connect", "tcp://*:5555"], "is for binding"),
    (["worker", "--connect", ADDR, "--log-level", "loud"], "invalid choice: 'loud'"),
    (["bench", "--runs", "0"], "--runs"),
    (["bench", "--connect", "tcp://127.0.0.1:99999"], "port 99999 is out of range"),
    (["keygen", "--out", "keys", "../escape"], "is not a key name"),
    (["keygen", "--out", "keys", "--client", "a/b"], "is not a key name"),
    (["keygen", "--out", "keys", "--worker", "n1", "--group", "../g"], "is not a key name"),
    (["keygen", "--out", "keys", "--client", "alice", "--group", "gpu"], "--group goes with"),
    (["keygen", "--out", "keys"], "one of the arguments"),
    (["keygen", "--out", "keys", "router", "--client", "alice"], "not allowed with"),
    (["demo", "--no-such-flag"], "unrecognized arguments"),
    ([], "the following arguments are required"),
]


@pytest.mark.parametrize(("args", "says"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_and_status_2(args: list[str], says: str, tmp_path: Path) -> None:
    line = one_line(squall_cli(*args, cwd=tmp_path), 2)
    assert says in line, line
    assert "--help" in line  # where to look next
    assert not (tmp_path / "keys").exists()  # nothing was written


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SQUALL_LOG_LEVEL": "loud"}, "SQUALL_LOG_LEVEL='loud' is not a level"),
        ({"SQUALL_HEARTBEAT": "often"}, "SQUALL_HEARTBEAT='often' is not a number"),
        ({"SQUALL_HEARTBEAT": "-1"}, "--heartbeat must be a positive number"),
        ({"SQUALL_LIVENESS": "0.1"}, "must be longer than --heartbeat"),
    ],
)
def test_a_bad_setting_in_the_environment_is_one_line(env: dict[str, str], says: str) -> None:
    line = one_line(squall_cli("router", "--bind", ADDR, "--insecure", env=env), 2)
    assert says in line, line


def _unwritable(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder this test cannot write in, and how to run squall so (root writes anywhere:
    it runs as nobody)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return folder, [sys.executable]
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot test an unwritable folder")
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # nobody must reach the folder to be refused inside it
        if parent == Path(parent.anchor):
            break
        parent.chmod(parent.stat().st_mode | 0o111)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return folder, [*nobody, sys.executable]


@pytest.mark.parametrize("args", [["router"], ["--client", "alice"]])
def test_keygen_into_an_unwritable_folder_is_one_line(tmp_path: Path, args: list[str]) -> None:
    folder, python = _unwritable(tmp_path)
    if args != ["router"]:  # the router's pair exists; the peer's folders cannot be made
        folder.chmod(0o755)
        assert squall_cli("keygen", "--out", str(folder), "router").returncode == 0
        folder.chmod(0o555)
    ran = subprocess.run(
        [*python, "-m", "squall", "keygen", "--out", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    line = one_line(ran, 1)
    assert line.startswith("squall keygen: cannot ") and "Permission denied" in line, line


def test_other_refusals_keep_status_1() -> None:
    line = one_line(squall_cli("router", "--bind", ADDR), 1)
    assert "refusing to listen" in line


# -- IPv6 ------------------------------------------------------------------------------------


def _ipv6_port() -> int:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")


@pytest.mark.parametrize(
    ("address", "ipv6"),
    [
        ("tcp://[::1]:5555", True),
        ("tcp://::1:5555", True),
        ("tcp://[fe80::1%eth0]:5555", True),
        ("tcp://[::1]:0;[::1]:5555", True),
        ("tcp://127.0.0.1:5555", False),
        ("tcp://localhost:5555", False),
        ("tcp://*:5555", False),
        ("ipc:///tmp/squall.sock", False),
    ],
)
def test_prepare_socket_turns_ipv6_on_for_ipv6_addresses(address: str, ipv6: bool) -> None:
    assert is_ipv6(address) is ipv6
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        prepare_socket(sock, address)
        assert sock.getsockopt(zmq.IPV6) == int(ipv6)


def _stats_over_ipv6(address: str) -> dict[str, object] | None:
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.linger = 0
        prepare_socket(sock, address)
        sock.connect(address)
        sock.send_multipart(protocol.encode_stats_request())
        if not sock.poll(500):
            return None
        type_, body = protocol.parse_header(sock.recv_multipart())
        return protocol.decode_stats(body)


def test_a_router_listens_on_ipv6_loopback(cluster: Cluster) -> None:
    address = f"tcp://[::1]:{_ipv6_port()}"
    router = cluster.start("router", "--bind", address, "--insecure")

    def up() -> dict[str, object] | None:
        assert router.popen.poll() is None, router.output()
        return _stats_over_ipv6(address)

    stats = wait_for(up, 15, "router answered over IPv6")
    assert stats["workers"] == 0


def test_a_task_runs_over_ipv6(cluster: Cluster) -> None:
    import squall

    address = f"tcp://[::1]:{_ipv6_port()}"
    cluster.start("router", "--bind", address, "--insecure")
    wait_for(lambda: _stats_over_ipv6(address), 15, "router answered over IPv6")
    cluster.start("worker", "--connect", address, "--processes", "1")
    with squall.Executor(address, connect_timeout=5) as ex:
        assert ex.submit(abs, -4).result(timeout=20) == 4


@pytest.mark.parametrize(
    "address",
    ["tcp://127.0.0.1:0", "tcp://127.0.0.1:65536", "tcp://:5555", "tcp://x:5555/", "inproc://"],
)
def test_validate_address_refuses_with_one_line(address: str) -> None:
    with pytest.raises(SquallError) as caught:
        validate_address(address)
    assert "\n" not in str(caught.value) and address in str(caught.value)


@pytest.mark.parametrize(
    ("address", "bind"),
    [
        ("tcp://127.0.0.1:1", False),
        ("tcp://[::1]:65535", False),
        ("tcp://router-host.example.org:5555", False),
        ("tcp://squall_router:5555", False),  # a container name
        ("tcp://*:5555", True),
        ("tcp://127.0.0.1:*", True),
        ("tcp://eth0:5555", True),
        ("tcp://192.168.1.10;10.0.0.2:5555", False),
        ("ipc:///tmp/squall/router.sock", False),
        ("inproc://router", False),
    ],
)
def test_validate_address_accepts_what_zmq_takes(address: str, bind: bool) -> None:
    assert validate_address(address, bind=bind) == address


# -- item 8: help, README and metadata -------------------------------------------------------


def _commands_in_help() -> list[str]:
    out = squall_cli("--help").stdout
    match = re.search(r"\{([a-z,]+)\}", out)
    assert match, out
    return match.group(1).split(",")


def test_help_and_readme_list_every_command() -> None:
    commands = _commands_in_help()
    assert "bench" in commands and "keygen" in commands
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## The command line", 1)[1].split("```", 2)[1]
    for command in commands:
        assert f"squall {command}" in block, command


def _readme_usage(command: str) -> str:
    """The lines of the README's command-line block for ``squall COMMAND``."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## The command line", 1)[1].split("```", 2)[1]
    return block.split(f"squall {command} ", 1)[1].split("\nsquall ", 1)[0]


@pytest.mark.parametrize("command", ["router", "keygen", "bench"])
def test_every_flag_has_help_and_is_in_the_readme(command: str) -> None:
    from squall.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    usage = _readme_usage(command)
    for action in commands.choices[command]._actions:
        if action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        assert action.help, f"{action.dest} has no help"
        for flag in action.option_strings:
            assert re.search(rf"{re.escape(flag)}\b", usage), f"README lacks {command} {flag}"


def test_the_package_metadata_has_project_urls() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    urls = project["urls"]
    assert set(urls) >= {"Homepage", "Documentation", "Issues", "Source"}
    assert all(url.startswith("https://") for url in urls.values())
