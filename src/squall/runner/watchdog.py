"""A worker process's watchdog: a native thread that heartbeats even while the hub is blocked.

A task that computes for a long time without yielding blocks the gevent hub, and with it every
greenlet, the heartbeat greenlet too. The router would then declare a healthy worker dead and
run its tasks again elsewhere. This thread is a real OS thread (not a greenlet), with a socket
of its own that speaks *for* the worker, so long tasks keep their lease.

It also enforces hard time limits: when the hub has been blocked past the deadline of a task
that has a ``timeout`` (plus a grace period), gevent can no longer interrupt that task, so the
watchdog reports the overdue tasks to the router (they fail with TaskTimeout) and ends the
process; the node restarts it and the router hands its other tasks to other workers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import zmq as native_zmq  # not zmq.green: this thread runs outside the hub
from gevent import monkey

from squall import protocol
from squall.auth import apply_client_keys
from squall.config import WorkerConfig
from squall.log import get_logger

log = get_logger(__name__)

#: how long the hub may stay blocked past a task's deadline before the process is restarted
HARD_LIMIT_GRACE = 1.0
EXIT_CODE = 75


class Watchdog:
    """Heartbeats for ``worker_id`` and restarts the process on a hard time limit.

    Args:
        config: the worker's settings (router address, keys).
        worker_id: the routing id of the worker's own socket.
        interval: seconds between heartbeats.
        hub_tick: returns when the hub last ran (monotonic seconds).
        deadlines: returns {task id: monotonic deadline} of running tasks with a timeout.
    """

    def __init__(
        self,
        config: WorkerConfig,
        worker_id: bytes,
        interval: float,
        hub_tick: Callable[[], float],
        deadlines: Callable[[], dict[int, float]],
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self.interval = interval
        self.hub_tick = hub_tick
        self.deadlines = deadlines
        self._stop = False

    def start(self) -> None:
        start_native_thread = monkey.get_original("_thread", "start_new_thread")
        start_native_thread(self._run, ())

    def stop(self) -> None:
        self._stop = True

    def _run(self) -> None:
        context: native_zmq.Context[Any] = native_zmq.Context()
        sock = context.socket(native_zmq.DEALER)
        sock.setsockopt(native_zmq.LINGER, 1000)
        sock.setsockopt(native_zmq.ROUTING_ID, self.worker_id + b"/watchdog")
        if self.config.auth is not None:
            apply_client_keys(sock, self.config.auth, self.config.key)
        sock.connect(self.config.connect)
        beat = protocol.encode_heartbeat(on_behalf_of=self.worker_id)
        try:
            while not self._stop:
                sock.poll(int(self.interval * 1000))  # a native sleep that drains replies
                while sock.poll(0):
                    sock.recv_multipart()  # router heartbeats and errors: nothing to do
                sock.send_multipart(beat)
                self._enforce_hard_limits(sock)
        finally:
            sock.close()
            context.term()

    def _enforce_hard_limits(self, sock: native_zmq.Socket[Any]) -> None:
        now = time.monotonic()
        if now - self.hub_tick() < HARD_LIMIT_GRACE:
            return  # the hub runs: gevent.Timeout enforces limits itself
        overdue = [
            t for t, deadline in self.deadlines().items() if now > deadline + HARD_LIMIT_GRACE
        ]
        if not overdue:
            return
        limit = f"its timeout (+{HARD_LIMIT_GRACE:g} s grace) with the event loop blocked"
        sock.send_multipart(protocol.encode_timeout(self.worker_id, limit, overdue))
        log.error(
            "tasks blocked the event loop past their time limit; restarting the process",
            tasks=overdue,
        )
        sock.close(linger=1000)  # let the report leave before the process ends
        os._exit(EXIT_CODE)
