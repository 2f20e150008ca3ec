"""A worker node: starts ``processes`` worker processes and keeps them alive.

The node itself runs no tasks and needs no gevent: it starts each worker process as a fresh
interpreter (so monkey-patching comes before any import), restarts one that dies, and on SIGTERM
stops them all before it exits. Worker processes watch the node's PID and exit if it vanishes, so
even a SIGKILLed node leaves no orphans.

Each worker process leads a process group of its own; when one ends, the node kills what is
left of its group, so whatever its tasks started (``subprocess``, ``os.fork()``) ends with it.
A process that exits with ``RESTART_EXIT_CODE`` (a blocked hub, recycling) ended on purpose and
is replaced at once; one that dies is restarted after pauses that grow while it keeps dying
young.

The node also vouches for processes that are alive but silent (a task holding the GIL), and
hears which task was running when one crashed: see ``runner.vouching`` and ``runner.fatal``.
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

from squall import protocol
from squall.config import STOP_GRACE, WorkerConfig
from squall.errors import SquallError
from squall.log import get_logger
from squall.runner.vouching import Voucher
from squall.runner.watchdog import REFUSED_EXIT_CODE, RESTART_EXIT_CODE

log = get_logger(__name__)

POLL_INTERVAL = 0.2
#: the node's exit status when it cannot work as configured (unreadable keys, a refused key),
#: as for any other bad usage of ``squall worker``
CONFIG_EXIT_CODE = 2


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
        self._stop_signal = signal.SIGTERM
        self.voucher: Voucher | None = None
        #: why the node gave up (a refused key): it stops and exits with CONFIG_EXIT_CODE
        self._fatal: str | None = None

    def _command(self, worker_id: bytes, status_fd: int) -> list[str]:
        # The whole config travels as one JSON argument: a new WorkerConfig field reaches the
        # worker processes without a flag to add on both sides.
        own = dataclasses.replace(
            self.config,
            processes=1,
            parent_pid=os.getpid(),
            worker_id=worker_id.hex(),
            status_fd=status_fd,
        )
        config = json.dumps(dataclasses.asdict(own))
        return [sys.executable, "-m", "squall.runner.main", "--config", config, *self.log_args]

    def _spawn(self, slot: int) -> None:
        # We choose its routing id, so that we can speak for it (runner.vouching).
        worker_id = protocol.new_peer_id()
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        os.set_blocking(status_w, False)  # a watchdog never waits for a busy node
        try:
            # A session (and so a process group) of its own: see _reap.
            child = subprocess.Popen(
                self._command(worker_id, status_w), start_new_session=True, pass_fds=(status_w,)
            )
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        self.children[slot] = child
        self._started_at[slot] = time.monotonic()
        if self.voucher is not None:
            self.voucher.add(slot, child.pid, worker_id, status_r)
        else:
            os.close(status_r)
        log.info("worker process started", slot=slot, worker_pid=child.pid)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT or until the parent (if watched) is gone.

        Returns CONFIG_EXIT_CODE, after one line on stderr, when the keys cannot be read or the
        router refuses them: restarting the processes would only fail the same way forever.
        """
        try:
            # Its socket reads the same key files the worker processes will: a missing key
            # fails here, once, rather than in every process at every restart.
            self.voucher = Voucher(self.config)
        except SquallError as exc:
            return _give_up(str(exc))

        def stop(signum: int, _: Any) -> None:
            # In their own sessions, workers no longer get a terminal's Ctrl-C: pass it on.
            self._stop_signal = signal.Signals(signum)
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info(
            "worker node starting",
            router=self.config.connect,
            processes=self.config.processes,
            concurrency=self.config.concurrency,
        )
        try:
            for slot in range(self.config.processes):
                self._spawn(slot)
            while not self._stopping:
                time.sleep(POLL_INTERVAL)
                parent = self.config.parent_pid
                if parent is not None and os.getppid() != parent:
                    log.info("parent process gone; worker node exits", parent_pid=parent)
                    break
                self._kill_silent(self.voucher.tick(time.monotonic()))
                self._restart_dead()
            self._stop_children()
        finally:
            self.voucher.close()
        return 0 if self._fatal is None else _give_up(self._fatal)

    def _kill_silent(self, slots: list[int]) -> None:
        for slot in slots:
            child = self.children[slot]
            if child is not None and child.returncode is None:
                child.kill()

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for slot, child in enumerate(self.children):
            if child is None or not _reap(child):
                continue
            if self._restart_at[slot] is None:
                self._last_words(slot, child)
            if child.returncode == REFUSED_EXIT_CODE:
                self._refused(slot, child)
                return
            if self._restart_at[slot] is None and child.returncode == RESTART_EXIT_CODE:
                self._restart_at[slot] = now
                self._quick_deaths[slot] = 0
                log.info("worker process ended to be replaced", slot=slot, worker_pid=child.pid)
            elif self._restart_at[slot] is None:
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

    def _refused(self, slot: int, child: subprocess.Popen[bytes]) -> None:
        """The router refused the key of the process in ``slot`` (it logged why): stop."""
        self.children[slot] = None
        self._stopping = True
        self._fatal = (
            f"the router at {self.config.connect} refused this key "
            f"({self.config.key!r} in {self.config.auth}): list its public key in the router's "
            "workers/ folder"
        )
        log.debug("worker process refused by the router", slot=slot, worker_pid=child.pid)

    def _last_words(self, slot: int, child: subprocess.Popen[bytes]) -> None:
        """What the ended process in ``slot`` said before it went (a crash's culprit)."""
        said = self.voucher.forget(slot) if self.voucher is not None else None
        if said is not None and said.crash_signal:
            assert self.voucher is not None
            self.voucher.report_crash(said)
            log.error(
                "worker process crashed on a fatal signal",
                worker_pid=child.pid,
                signal=signal.Signals(said.crash_signal).name,
                culprit_task=said.culprit,
            )

    def _stop_children(self) -> None:
        live = [c for c in self.children if c is not None and not _reap(c)]
        for child in live:
            child.send_signal(self._stop_signal)
        deadline = time.monotonic() + self.config.grace + STOP_GRACE
        while live and time.monotonic() < deadline:
            time.sleep(0.05)
            live = [c for c in live if not _reap(c)]
        for child in live:
            log.warning("worker process did not stop; killing it", worker_pid=child.pid)
            child.kill()
            child.wait()
            _kill_group(child.pid)
        log.info("worker node stopped")


def _give_up(why: str) -> int:
    """One line on stderr, as ``squall worker`` reports bad usage; the node's exit status."""
    sys.stderr.write(f"squall worker: {why}\n")
    sys.stderr.flush()
    return CONFIG_EXIT_CODE


def _reap(child: subprocess.Popen[bytes]) -> bool:
    """Whether ``child`` has ended; if it just did, kill its process group, then reap it.

    The group goes first: until the leader is reaped its pid (the group's id) cannot be given
    to another process, so the kill cannot hit a stranger.
    """
    if child.returncode is not None:
        return True
    waitid = getattr(os, "waitid", None)
    if waitid is not None:
        try:
            if waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return False
        except ChildProcessError:
            pass  # reaped by someone else: poll() below says how it ended
        _kill_group(child.pid)
        child.poll()
        return True
    if child.poll() is None:
        return False
    _kill_group(child.pid)
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in it
