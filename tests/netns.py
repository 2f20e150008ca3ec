"""Separate hosts on one machine: Linux network namespaces joined by veth pairs and a bridge.

Each host is a namespace with its own loopback and one interface on 10.77.<n>.0/24; the bridge
lives in a namespace of its own, so nothing touches the machine's real network. Everything is
removed again by :meth:`Network.close` (deleting a namespace deletes its interfaces).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FAST_ENV = {"SQUALL_HEARTBEAT": "0.2", "SQUALL_LIVENESS": "1.0", "SQUALL_LOG_LEVEL": "info"}


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=20)


def can_create_namespaces() -> str | None:
    """None when this process may create namespaces; else the reason it may not."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"sqprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create network namespaces here: {exc}"
    return None


class Network:
    """A switch namespace and host namespaces plugged into it."""

    def __init__(self, subnet: int = 77) -> None:
        self.tag = f"sq{os.getpid() % 100000}"
        self.subnet = subnet
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, tuple[str, str, str]] = {}  # name -> (netns, ifname, address)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[object] = []
        _ip("netns", "add", self.switch)
        _ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        _ip("link", "set", "br0", "up", netns=self.switch)

    def add_host(self, name: str) -> str:
        """Create host ``name``; return its address."""
        index = len(self.hosts) + 1
        netns = f"{self.tag}-{name}"
        inside, outside = f"eth-{name}"[:15], f"{self.tag}{index}"[:15]
        address = f"10.{self.subnet}.0.{index}"
        _ip("netns", "add", netns)
        _ip(
            "link",
            "add",
            inside,
            "netns",
            netns,
            "type",
            "veth",
            "peer",
            "name",
            outside,
            "netns",
            self.switch,
        )
        _ip("link", "set", outside, "master", "br0", "up", netns=self.switch)
        _ip("addr", "add", f"{address}/24", "dev", inside, netns=netns)
        _ip("link", "set", inside, "up", netns=netns)
        _ip("link", "set", "lo", "up", netns=netns)
        self.hosts[name] = (netns, inside, address)
        return address

    def address(self, name: str) -> str:
        return self.hosts[name][2]

    def link(self, name: str, up: bool) -> None:
        """Plug or unplug host ``name``'s cable."""
        netns, inside, _ = self.hosts[name]
        _ip("link", "set", inside, "up" if up else "down", netns=netns)

    def run(
        self, name: str, args: list[str], log: Path, **popen: object
    ) -> subprocess.Popen[bytes]:
        """Start ``python args...`` on host ``name`` (``ip netns exec`` execs it: same PID)."""
        netns = self.hosts[name][0]
        env = {**os.environ, **FAST_ENV}
        out = open(log, "wb")
        self._logs.append(out)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, *args],
            stdout=popen.pop("stdout", out),
            stderr=out,
            env=env,
            **popen,
        )  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in self.procs:
            if proc.stdout is not None:
                proc.stdout.close()
        for out in self._logs:
            out.close()  # type: ignore[attr-defined]
        for netns, _, _ in self.hosts.values():
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True, timeout=20)
