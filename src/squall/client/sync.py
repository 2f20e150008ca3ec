"""The threaded driver: one background thread polls the client's DEALER socket.

ZeroMQ sockets belong to one thread, so caller threads never touch the socket: they queue work in
the :class:`ClientCore` and, when the driver is idle, wake it through a pipe that the driver
polls beside the socket. A burst of submits costs one wake-up and goes out as SUBMIT batches.
Everything the connection decides (handshake, liveness, reconnecting, errors) is the core's:
this only reads, sends, and hands the core what happened.

It is the gevent driver too: under gevent's monkey-patching, ``threading`` makes its thread a
greenlet, and this polls with ``zmq.green`` so that it yields to the hub instead of blocking it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import sys
import threading
import time
from typing import Any

import zmq
import zmq.green
import zmq.utils.monitor

from squall import protocol, transport
from squall.auth import apply_client_keys
from squall.client._core import ClientCore, Step
from squall.config import DRAIN_BATCH, prepare_socket
from squall.errors import ProtocolError, SquallError, StartupError
from squall.log import get_logger
from squall.memory import Trimmer

log = get_logger(__name__)

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _gevent_patched() -> bool:
    """Whether gevent has patched threading (and so made our I/O thread a greenlet)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def client_socket(
    context: zmq.Context[Any], auth: str | None, key: str
) -> tuple[zmq.Socket[Any], zmq.Socket[Any] | None]:
    """A DEALER for the router, and with keys the monitor of its handshakes (to tell a
    refused key at once); shared by the drivers."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    # A random routing id (libzmq's own are predictable): the router binds it to our key, and
    # no other peer can guess it to take over our session.
    socket.setsockopt(zmq.ROUTING_ID, protocol.new_peer_id())
    if auth is None:
        return socket, None
    apply_client_keys(socket, auth, key)
    # A fresh endpoint: pyzmq's default names it after the fd, which a closed socket's monitor
    # may still hold.
    endpoint = f"inproc://squall-monitor-{os.getpid()}-{os.urandom(8).hex()}"
    return socket, socket.get_monitor_socket(HANDSHAKE_FAILED, endpoint)


class ThreadDriver:
    """Moves the core's messages over a DEALER socket connected to ``address``."""

    def __init__(
        self,
        address: str,
        core: ClientCore,
        auth: str | None = None,
        key: str = "client",
        worker_group: str = "",
    ) -> None:
        self.address = address
        self.core = core
        self._key = key
        self._group = worker_group
        # Under gevent's monkey-patching our "thread" is a greenlet: it must poll with zmq.green,
        # or it would block the hub and every greenlet waiting on a future with it.
        self._zmq: Any = zmq.green if _gevent_patched() else zmq
        self.context: zmq.Context[Any] = self._zmq.Context()
        self.socket, self._monitor = client_socket(self.context, auth, key)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        #: frames the socket would not take yet (no connection): sent first, in order
        self._unsent: collections.deque[list[Any]] = collections.deque()
        self._settled = threading.Event()
        self._closing = False
        self._trimmer = Trimmer()
        self._thread = threading.Thread(target=self._loop, name="squall-client-io", daemon=True)

    def start(self, timeout: float) -> None:
        """Connect and wait for the router's WELCOME.

        Raises:
            StartupError: no router answered within ``timeout`` seconds.
            SquallError: the router refused us (the core's ``error``).
        """
        prepare_socket(self.socket, self.address)
        self.socket.connect(self.address)
        step = self.core.open(self.address, time.monotonic(), os.getpid(), self._key, self._group)
        self._unsent.extend(step.send)
        self._thread.start()
        if not self._settled.wait(timeout):
            waited = round(timeout, 1)
            raise StartupError(f"no squall router answered at {self.address} within {waited:g} s")
        if self.core.error is not None:
            raise self.core.error

    def silent_for(self) -> float:
        """Seconds since the router was last heard from (0 while it answers)."""
        return self.core.silent_for(time.monotonic())

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def send(self, frames: list[Any]) -> None:
        """Send a message from any thread."""
        self.core.post(frames)
        self.wake()

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask the router for its counters."""
        waiter: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.core.ask_stats(waiter)
        self.wake()
        try:
            return waiter.result(timeout)
        except concurrent.futures.TimeoutError:
            waiter.cancel()  # replies come in order: a late one must not answer the next caller
            raise

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        if self._thread.is_alive():
            return  # still polling: leave its fds and context alone rather than pull them away
        if not self.socket.closed:  # the thread never ran (start failed early)
            self.socket.close(linger=0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.context.term()

    # -- the I/O thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        poller = self._zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        self.core.io_thread = threading.current_thread()
        try:
            while not self._closing:
                # Wait for room to send only while something waits for it.
                poller.modify(self.socket, zmq.POLLIN | (zmq.POLLOUT if self._unsent else 0))
                events = dict(poller.poll(250))
                if self._wake_r in events:
                    try:
                        os.read(self._wake_r, 65536)
                    except BlockingIOError:
                        pass
                self._send_queued()
                if self.socket in events:
                    self._drain()
                if self._monitor is not None and self._monitor in events:
                    self._read_monitor()
                if self.core.pending:
                    self._trimmer.worked()
                else:
                    self._trimmer.idle()  # a burst is over: hand freed memory back
                self._carry_out(self.core.tick(time.monotonic()))  # after reading: see tick()
                self._send_queued()
            self._send_queued()
            self._unsent.append(self.core.goodbye())
            self._flush()
        except Exception as exc:
            if not self._closing:
                # Nobody would ever resolve the pending futures: fail them, loudly.
                log.exception("client I/O thread stopped")
                self.core.fail_all(SquallError(f"the client's I/O thread stopped: {exc!r}"))
        finally:
            if self._monitor is not None:
                self.socket.disable_monitor()
                self._monitor.close(linger=0)
            self.socket.close(linger=0)

    def _carry_out(self, step: Step) -> None:
        self._unsent.extend(step.send)
        step.deliver()
        if not self._settled.is_set() and self.core.settled:
            self._settled.set()

    def _read_monitor(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                event = zmq.utils.monitor.recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            refused = event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            self._carry_out(self.core.handshake_failed(refused, event["value"]))

    def _send_queued(self) -> None:
        """Send what is queued without ever blocking: a DEALER with no connection (the
        handshake was refused, the router is away and the queue is at its high-water mark)
        would block a plain send, and with it this thread, which must go on polling (for the
        monitor's report of a refused key, for the router's return)."""
        self._unsent.extend(self.core.take_outgoing())
        self._flush()

    def _flush(self) -> None:
        while self._unsent:
            try:
                transport.send(self.socket, self._unsent[0])
            except zmq.Again:
                return
            self._unsent.popleft()

    def _drain(self) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = transport.recv(self.socket)
            except zmq.Again:
                return
            try:
                self._carry_out(self.core.receive(frames, time.monotonic()))
            except ProtocolError as exc:
                log.warning("malformed message from router dropped", error=str(exc))
