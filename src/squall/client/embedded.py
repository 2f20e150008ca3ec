"""The embedded default: a private router and worker node as subprocesses of the caller.

They talk over an ipc:// socket inside a fresh temporary directory of mode 0700, so no other
local user can connect and have code run. Both children are told the caller's PID and exit on
their own when it disappears, so even a SIGKILLed caller leaves no orphans; a normal
:meth:`LocalCluster.stop` stops them by PID (TERM, then KILL).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from squall.config import STOP_GRACE
from squall.errors import StartupError
from squall.log import get_logger

log = get_logger(__name__)


class LocalCluster:
    """A router and one worker node on this machine, owned by this process."""

    def __init__(self, processes: int, concurrency: int) -> None:
        self.processes = processes
        self.concurrency = concurrency
        self.directory = ""
        self.address = ""
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> str:
        """Start the router and the node; return the address to connect to."""
        self.directory = tempfile.mkdtemp(prefix="squall-")  # mode 0700
        self.address = f"ipc://{self.directory}/router"
        env = dict(os.environ)
        env.setdefault("SQUALL_LOG_LEVEL", "warning")
        parent = ["--parent-pid", str(os.getpid())]
        squall = [sys.executable, "-m", "squall"]
        self.children["router"] = subprocess.Popen(
            [*squall, "router", "--bind", self.address, *parent], env=env
        )
        self.children["worker node"] = subprocess.Popen(
            [
                *squall,
                "worker",
                "--connect",
                self.address,
                "--processes",
                str(self.processes),
                "--concurrency",
                str(self.concurrency),
                *parent,
            ],
            env=env,
        )
        return self.address

    @property
    def pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.children.items()}

    def check(self) -> None:
        """Raise if a child has exited.

        Raises:
            StartupError: naming the child and its exit code.
        """
        for name, child in self.children.items():
            code = child.poll()
            if code is not None:
                raise StartupError(f"the embedded {name} exited with code {code}")

    def stop(self) -> None:
        """Stop the children by PID (TERM, then KILL after a grace period); remove the directory."""
        live = [c for c in self.children.values() if c.poll() is None]
        for child in live:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in live:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("embedded process did not stop; killing it", pid=child.pid)
                child.kill()
                child.wait()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def astop(self) -> None:
        """:meth:`stop`, awaited: the event loop runs on while the children stop."""
        live = [c for c in self.children.values() if c.poll() is None]
        for child in live:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(c.poll() is None for c in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for child in live:
            if child.poll() is None:
                log.warning("embedded process did not stop; killing it", pid=child.pid)
                child.kill()
                child.wait()
        self.stop()  # nothing left running: only the directory to remove
