"""Scale-out across hosts: a router, two worker hosts and a client host, over TCP with CURVE.

The hosts are network namespaces this test makes (see ``netns.py``); the steps are the README's
"Several machines" section, one for one. Skipped, with the reason, where namespaces cannot be
made.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from netns import Network, can_create_namespaces

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(bool(can_create_namespaces()), reason=str(can_create_namespaces())),
]

CLIENT = textwrap.dedent("""
    import json, os, socket, sys, time
    import squall

    def where(i):
        time.sleep(0.2)
        return i, socket.gethostname(), os.getpid()

    with squall.Executor(sys.argv[1], auth=sys.argv[2], key="alice", connect_timeout=30) as ex:
        deadline = time.monotonic() + 60
        while ex.stats()["workers"] < 4:
            assert time.monotonic() < deadline, "workers did not register"
            time.sleep(0.1)
        print("ready", flush=True)
        results = list(ex.map(where, range(10_000)))
        stats = ex.stats()
    print(json.dumps({"values": [r[0] for r in results], "pids": sorted({r[2] for r in results}),
                      "redelivered": stats["redelivered"]}), flush=True)
""")


@pytest.fixture
def network():
    net = Network()
    try:
        yield net
    finally:
        net.close()


def squall_cli(*args: str) -> list[str]:
    return ["-m", "squall", *args]


def test_ten_thousand_tasks_across_hosts_survive_a_cut_link(network: Network, tmp_path) -> None:
    for host in ("router", "worker1", "worker2", "client"):
        network.add_host(host)
    router_address = f"tcp://{network.address('router')}:5555"

    # The README's steps: keys for the router, a client and each worker node.
    keys = tmp_path / "keys"
    for args in (
        ["--out", str(keys), "router"],
        ["--out", str(keys / "clients"), "alice"],
        ["--out", str(keys / "workers"), "node1"],
        ["--out", str(keys / "workers"), "node2"],
    ):
        subprocess.run(
            [sys.executable, "-m", "squall", "keygen", *args],
            check=True,
            capture_output=True,
            timeout=30,
        )
    homes = {}
    for name, sub in (("alice", "clients"), ("node1", "workers"), ("node2", "workers")):
        home = tmp_path / f"home-{name}"
        home.mkdir()
        shutil.copy(keys / "router.key", home)
        shutil.move(keys / sub / f"{name}.key_secret", home)
        shutil.copy(keys / sub / f"{name}.key", home)
        homes[name] = home

    network.run(
        "router",
        squall_cli("router", "--bind", "tcp://0.0.0.0:5555", "--auth", str(keys)),
        tmp_path / "router.log",
    )
    for host, key in (("worker1", "node1"), ("worker2", "node2")):
        network.run(
            host,
            squall_cli(
                "worker",
                "--connect",
                router_address,
                "--auth",
                str(homes[key]),
                "--key",
                key,
                "--processes",
                "2",
                "--concurrency",
                "200",
            ),
            tmp_path / f"{host}.log",
        )
    client = network.run(
        "client",
        ["-c", CLIENT, router_address, str(homes["alice"])],
        tmp_path / "client.log",
        stdout=subprocess.PIPE,
    )
    assert client.stdout is not None
    assert client.stdout.readline().strip() == b"ready", (tmp_path / "client.log").read_text()
    time.sleep(0.7)
    network.link("worker1", up=False)  # mid-run: worker1's tasks must go to worker2
    out = client.stdout.readline()
    assert client.wait(120) == 0, (tmp_path / "client.log").read_text()
    summary = json.loads(out)
    assert summary["values"] == list(range(10_000))
    assert summary["redelivered"] > 0
    assert len(summary["pids"]) == 4  # both hosts worked before the cut


def test_the_router_refuses_a_public_address_without_auth(network: Network) -> None:
    network.add_host("router")
    netns = network.hosts["router"][0]
    ran = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-m",
            "squall",
            "router",
            "--bind",
            "tcp://0.0.0.0:5555",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode != 0
    assert "refusing to listen on tcp://0.0.0.0:5555 without authentication" in ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1
