"""A worker node: starts ``processes`` worker processes and keeps them alive.

The node itself runs no tasks and needs no gevent: it starts each worker process as a fresh
interpreter (so monkey-patching comes before any import), restarts one that dies, and on SIGTERM
stops them all before it exits. Worker processes watch the node's PID and exit if it vanishes, so
even a SIGKILLed node leaves no orphans.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from squall.config import WorkerConfig
from squall.log import get_logger

log = get_logger(__name__)

POLL_INTERVAL = 0.2
STOP_GRACE = 5.0


class WorkerNode:
    """Supervisor of one node's worker processes.

    Args:
        config: the node's settings.
        log_args: logging flags handed on to each worker process.
    """

    def __init__(self, config: WorkerConfig, log_args: list[str] | None = None) -> None:
        self.config = config
        self.log_args = log_args or []
        self.children: list[subprocess.Popen[bytes] | None] = [None] * config.processes
        self._quick_deaths = [0] * config.processes
        self._started_at = [0.0] * config.processes
        self._restart_at: list[float | None] = [None] * config.processes
        self._stopping = False

    def _command(self) -> list[str]:
        # The whole config travels as one JSON argument: a new WorkerConfig field reaches the
        # worker processes without a flag to add on both sides.
        own = dataclasses.replace(self.config, processes=1, parent_pid=os.getpid())
        config = json.dumps(dataclasses.asdict(own))
        return [sys.executable, "-m", "squall.runner.main", "--config", config, *self.log_args]

    def _spawn(self, slot: int) -> None:
        child = subprocess.Popen(self._command())
        self.children[slot] = child
        self._started_at[slot] = time.monotonic()
        log.info("worker process started", slot=slot, worker_pid=child.pid)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT or until the parent (if watched) is gone."""

        def stop(signum: int, _: Any) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info(
            "worker node starting",
            router=self.config.connect,
            processes=self.config.processes,
            concurrency=self.config.concurrency,
        )
        for slot in range(self.config.processes):
            self._spawn(slot)
        while not self._stopping:
            time.sleep(POLL_INTERVAL)
            parent = self.config.parent_pid
            if parent is not None and os.getppid() != parent:
                log.info("parent process gone; worker node exits", parent_pid=parent)
                break
            self._restart_dead()
        self._stop_children()
        return 0

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for slot, child in enumerate(self.children):
            if child is None or child.poll() is None:
                continue
            if self._restart_at[slot] is None:
                # A process that keeps dying at once (bad address, broken install) is restarted
                # after growing pauses rather than in a hot loop.
                quick = now - self._started_at[slot] < 2.0
                self._quick_deaths[slot] = self._quick_deaths[slot] + 1 if quick else 0
                delay = min(0.1 * 2 ** self._quick_deaths[slot], 10.0) if quick else 0.0
                self._restart_at[slot] = now + delay
                log.warning(
                    "worker process died; restarting",
                    slot=slot,
                    worker_pid=child.pid,
                    exit_code=child.returncode,
                    after=round(delay, 2),
                )
            restart_at = self._restart_at[slot]
            if restart_at is not None and now >= restart_at:
                self._restart_at[slot] = None
                self._spawn(slot)

    def _stop_children(self) -> None:
        live = [c for c in self.children if c is not None and c.poll() is None]
        for child in live:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace + STOP_GRACE
        for child in live:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker process did not stop; killing it", worker_pid=child.pid)
                child.kill()
                child.wait()
        log.info("worker node stopped")
