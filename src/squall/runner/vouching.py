"""The node vouches for worker processes that are alive but cannot speak for themselves.

A task that holds the GIL (a long regex, a huge allocation, a C call that does not release it)
silences the process's watchdog thread too, since that thread needs the GIL to run. The router
would take the process for dead: it would run its tasks again elsewhere, drop the results it
sends once the call returns, and charge each of its tasks a death.

The node can tell such a process from a dead one: the process exists and is running (not
stopped, not a zombie). Each worker process's watchdog writes a status record to a pipe to its
node on every beat, and the node, which chose the process's routing id, heartbeats on its
behalf from a socket of its own once the watchdog has been silent for a beat and a half. The
node's heartbeats say the hub is blocked (for as long as the watchdog has been silent, at
least), so the router sends the process nothing new meanwhile. They claim every task id as
received: the node cannot know which tasks the hub read after its watchdog last wrote (the
task holding the GIL is one of them), and a task the router took back while it runs would run
twice; those sent before the block was known wait in the socket until the GIL is released.

A process silent past ``--block-limit`` is killed (and restarted by the node): it holds the
GIL too long, or is wedged. Its watchdog never got to name the task to blame, so the router
sees an ordinary death. A stopped process (SIGSTOP) is not vouched for.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import zmq

from squall import protocol
from squall.auth import apply_client_keys
from squall.config import WorkerConfig, prepare_socket
from squall.errors import SquallError
from squall.log import get_logger
from squall.runner.watchdog import STATUS, StatusKind

log = get_logger(__name__)

#: beats of watchdog silence after which the node speaks for a live process
VOUCH_AFTER_BEATS = 1.5
#: seconds a new process has to start its watchdog before its silence counts
STARTUP_GRACE = 5.0
#: the highest task id the node says a silent hub has received: all of them (see above)
ALL_TASKS = (1 << 64) - 1


@dataclasses.dataclass
class Child:
    """What the node knows of one worker process."""

    pid: int
    worker_id: bytes
    status_fd: int
    #: when its watchdog last wrote; at first, a little after the start (a grace period)
    heard_at: float
    pending: bytes = b""
    blocked_ms: int = 0
    last_task: int = 0
    #: the task its fatal-signal handler named, if it crashed
    culprit: int | None = None
    crash_signal: int = 0
    vouched_at: float = 0.0


class Voucher:
    """Reads the worker processes' status pipes and heartbeats for the silent live ones.

    Args:
        config: the node's settings (router address, keys, heartbeat, block limit).
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.children: dict[int, Child] = {}  # by slot
        self._context: zmq.Context[Any] = zmq.Context()
        self.socket = self._context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTING_ID, protocol.new_peer_id() + b"/node")
        if config.auth is not None:
            try:
                apply_client_keys(self.socket, config.auth, config.key)
            except SquallError:
                self.socket.close()
                self._context.term()
                raise
        prepare_socket(self.socket, config.connect)
        self.socket.connect(config.connect)

    def add(self, slot: int, pid: int, worker_id: bytes, status_fd: int) -> None:
        """A new worker process in ``slot``, reporting on ``status_fd`` (the read end)."""
        self.forget(slot)
        self.children[slot] = Child(pid, worker_id, status_fd, time.monotonic() + STARTUP_GRACE)

    def forget(self, slot: int) -> Child | None:
        """The process in ``slot`` ended: read its last words, close its pipe, return it."""
        child = self.children.pop(slot, None)
        if child is not None:
            self._read(child)
            os.close(child.status_fd)
        return child

    def tick(self, now: float) -> list[int]:
        """Read every status pipe, vouch where needed; return the slots to kill."""
        while self.socket.poll(0):
            self.socket.recv_multipart()  # heartbeats and errors from the router: nothing to do
        doomed = []
        for slot, child in self.children.items():
            self._read(child)
            if child.crash_signal:
                continue
            silent = now - child.heard_at
            if silent < VOUCH_AFTER_BEATS * self.config.heartbeat or not _running(child.pid):
                continue
            blocked = silent + child.blocked_ms / 1000
            limit = self.config.block_limit
            if limit and blocked >= limit:
                log.error(
                    "worker process silent past the block limit (a task holds the GIL, or it "
                    "is wedged); killing it",
                    worker_pid=child.pid,
                    silent_s=round(silent, 1),
                    block_limit=limit,
                )
                doomed.append(slot)
            elif now - child.vouched_at >= self.config.heartbeat:
                self._vouch(child, blocked)
                child.vouched_at = now
        return doomed

    def report_crash(self, child: Child) -> None:
        """Tell the router that ``child`` died on a fatal signal, and which task it was running
        (if its handler could say): only that task is charged the death."""
        culprits = [child.culprit] if child.culprit else []
        try:
            self.socket.send_multipart(
                protocol.encode_crashed(child.worker_id, culprits), zmq.NOBLOCK
            )
        except zmq.ZMQError:
            pass  # the router will count an ordinary death when it notices

    def close(self) -> None:
        for slot in list(self.children):
            self.forget(slot)
        self.socket.close()
        self._context.term()

    def _vouch(self, child: Child, blocked: float) -> None:
        beat = protocol.encode_heartbeat(
            on_behalf_of=child.worker_id, blocked_ms=int(blocked * 1000), last_task=ALL_TASKS
        )
        try:
            self.socket.send_multipart(beat, zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected yet: the next beat will do
        log.debug("vouching for a silent worker process", worker_pid=child.pid, blocked_s=blocked)

    def _read(self, child: Child) -> None:
        try:
            data = os.read(child.status_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            return
        data = child.pending + data
        whole = len(data) - len(data) % STATUS.size
        child.pending = data[whole:]
        for offset in range(0, whole, STATUS.size):
            kind, value, task = STATUS.unpack_from(data, offset)
            if kind == StatusKind.BEAT:
                child.heard_at = time.monotonic()
                child.blocked_ms, child.last_task = value, task
            elif kind == StatusKind.CRASH:
                child.crash_signal, child.culprit = value, task or None


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is neither stopped nor a zombie (Linux: /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"T", b"t", b"Z", b"X")
