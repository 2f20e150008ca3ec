"""A worker process's watchdog: a native thread that heartbeats even while the hub is blocked.

A task that computes for a long time without yielding blocks the gevent hub, and with it every
greenlet, the heartbeat greenlet too. The router would then declare a healthy worker dead and
run its tasks again elsewhere. This thread is a real OS thread (not a greenlet), with a socket
of its own that speaks *for* the worker, so long tasks keep their lease. Each heartbeat also
says how long the hub has been blocked and the highest task id the hub has received, so the
router gives a blocked process no new tasks and takes back those still unread in its socket.

It also ends a hub that stays blocked, blaming only the task that holds it (found by walking
the main thread's stack, which costs nothing until a block is seen):

- past that task's own ``timeout`` (plus a grace period), since gevent can no longer interrupt
  it;
- past ``--block-limit`` seconds, for any task.

The watchdog then reports that one task to the router (it fails with TaskTimeout; the process's
other tasks go to other workers, with no death counted against them) and ends the process,
which its node restarts at once. Neighbours whose own deadlines passed only because the hub was
blocked are not blamed. A block no task can be blamed for ends the process without a report: the
router sees a death, and its isolation of repeat victims finds the culprit.
"""

from __future__ import annotations

import enum
import os
import struct
import time
from typing import Any, Protocol

import zmq as native_zmq  # not zmq.green: this thread runs outside the hub
from gevent import monkey

from squall import protocol
from squall.config import WorkerConfig, prepare_socket
from squall.log import get_logger

log = get_logger(__name__)

#: how long the hub may stay blocked past a task's deadline before the process is restarted
HARD_LIMIT_GRACE = 1.0
#: exit status of a process that ends on purpose to be replaced at once (a blocked hub, a
#: recycled process); the node restarts it without the pause it puts after crashes
RESTART_EXIT_CODE = 75
#: exit status of a process whose key the router refused (EX_CONFIG): its node stops rather
#: than restart it, since a new process would be refused the same way
REFUSED_EXIT_CODE = 78
#: a hub that last ran longer ago than this is reported as blocked (it ticks every 0.1 s)
BLOCKED_AFTER = 0.25
#: how long the restart report may take to leave before the process ends anyway
REPORT_LINGER = 2.0
#: a record on the status pipe to the node: kind, then blocked ms and the highest task id
#: received (a beat), or the fatal signal and the task that was running (a crash)
STATUS = struct.Struct("!BIQ")


class StatusKind(enum.IntEnum):
    BEAT = 0
    CRASH = 1


_native_sleep = monkey.get_original("time", "sleep")
_start_native_thread = monkey.get_original("_thread", "start_new_thread")


class Hub(Protocol):
    """What the watchdog reads of its worker process (from another thread, under the GIL)."""

    hub_tick: float
    last_task: int
    deadlines: dict[int, float]

    def blocking_task(self) -> int | None:
        """The task whose code the main thread is running now, if any."""


class Watchdog:
    """Heartbeats for ``worker_id`` and restarts the process whose hub stays blocked.

    Args:
        config: the worker's settings (router address, keys, block limit, status pipe).
        worker_id: the routing id of the worker's own socket.
        hub: the worker process, read for its hub's state.
    """

    def __init__(self, config: WorkerConfig, worker_id: bytes, hub: Hub) -> None:
        self.config = config
        self.worker_id = worker_id
        self.interval = config.heartbeat
        self.hub = hub
        self._stop = False
        #: the current block: the hub tick it started after, its blocker, and since when
        self._episode: tuple[float, int | None, float] = (0.0, None, 0.0)

    def start(self) -> None:
        _start_native_thread(self._run, ())

    def stop(self) -> None:
        self._stop = True

    def _run(self) -> None:
        context: native_zmq.Context[Any] = native_zmq.Context()
        sock = context.socket(native_zmq.DEALER)
        sock.setsockopt(native_zmq.LINGER, 1000)
        sock.setsockopt(native_zmq.ROUTING_ID, self.worker_id + b"/watchdog")
        if self.config.auth is not None:
            from squall.auth import apply_client_keys  # not imported without --auth

            apply_client_keys(sock, self.config.auth, self.config.key)
        prepare_socket(sock, self.config.connect)
        sock.connect(self.config.connect)
        try:
            while not self._stop:  # a beat at once: the node hears from us before any task
                verdict = self._beat(sock)
                if verdict is not None:
                    self._restart(sock, context, *verdict)
                sock.poll(int(self.interval * 1000))  # a native sleep that drains replies
                while sock.poll(0):
                    sock.recv_multipart()  # router heartbeats and errors: nothing to do
        finally:
            sock.close()
            context.term()

    def _beat(self, sock: native_zmq.Socket[Any]) -> tuple[int | None, str] | None:
        """Heartbeat; return (blocker, limit) when the process must be restarted."""
        now = time.monotonic()
        tick = self.hub.hub_tick
        blocked = now - tick
        blocked_ms = int(blocked * 1000) if blocked > BLOCKED_AFTER else 0
        last_task = self.hub.last_task
        sock.send_multipart(
            protocol.encode_heartbeat(
                on_behalf_of=self.worker_id, blocked_ms=blocked_ms, last_task=last_task
            )
        )
        self._tell_node(blocked_ms, last_task)
        if blocked < HARD_LIMIT_GRACE:
            return None
        return self._judge(now, tick)

    def _tell_node(self, blocked_ms: int, last_task: int) -> None:
        """One record per beat on the node's status pipe: proof of life it can vouch for."""
        fd = self.config.status_fd
        if fd is None:
            return
        try:
            os.write(fd, STATUS.pack(StatusKind.BEAT, min(blocked_ms, 0xFFFFFFFF), last_task))
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # a full pipe (the node is busy) or a node that is gone: nothing to do

    def _judge(self, now: float, tick: float) -> tuple[int | None, str] | None:
        """(blocker, limit) if the task holding the hub is past its deadline or the limit."""
        blocker = self.hub.blocking_task()
        since = self._blocked_since(tick, blocker, now)
        if blocker is not None:
            deadline = self.hub.deadlines.get(blocker)
            if deadline is not None and now > deadline + HARD_LIMIT_GRACE:
                return (
                    blocker,
                    f"its timeout (+{HARD_LIMIT_GRACE:g} s grace) with the event loop blocked",
                )
        limit = self.config.block_limit
        if limit and now - since >= limit:
            return blocker, f"the --block-limit of {limit:g} s"
        return None

    def _blocked_since(self, tick: float, blocker: int | None, now: float) -> float:
        """When ``blocker`` started holding the hub, as far as this thread can tell."""
        episode_tick, previous, since = self._episode
        if episode_tick != tick:
            since = tick  # a new block: it began after the hub's last tick
        elif previous != blocker:
            since = now  # the same block, but another task holds it now
        self._episode = (tick, blocker, since)
        return since

    def _restart(
        self,
        sock: native_zmq.Socket[Any],
        context: native_zmq.Context[Any],
        blocker: int | None,
        limit: str,
    ) -> None:
        """Report ``blocker`` (if known), let the report leave, and end the process."""
        if blocker is None:
            log.error("the event loop stayed blocked by no task squall can name", limit=limit)
        else:
            sock.send_multipart(protocol.encode_timeout(self.worker_id, limit, [blocker]))
            log.error(
                "a task blocked the event loop; restarting the process", task=blocker, limit=limit
            )
        self._leave(sock, context)

    def _leave(self, sock: native_zmq.Socket[Any], context: native_zmq.Context[Any]) -> None:
        # zmq_close does not wait for the linger period, only terminating the context does;
        # a second thread ends the process should term() hang all the same.
        _start_native_thread(_exit_after, (REPORT_LINGER + 1.0,))
        sock.close(linger=int(REPORT_LINGER * 1000))
        context.term()
        os._exit(RESTART_EXIT_CODE)


def _exit_after(seconds: float) -> None:
    _native_sleep(seconds)
    os._exit(RESTART_EXIT_CODE)
