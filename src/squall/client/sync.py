"""The threaded I/O driver: one background thread owns the client's DEALER socket.

ZeroMQ sockets belong to one thread, so caller threads never touch the socket: they queue work in
the :class:`ClientCore` and, when the driver is idle, wake it through a pipe that the driver
polls beside the socket. A burst of submits costs one wake-up and goes out as SUBMIT batches.
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

from squall import protocol
from squall.auth import apply_client_keys
from squall.client._core import ClientCore
from squall.config import prepare_socket
from squall.errors import ProtocolError, Refused, SquallError, StartupError
from squall.log import get_logger
from squall.memory import Trimmer
from squall.protocol import ErrorCode, MsgType, Role

log = get_logger(__name__)

DRAIN_BATCH = 2000
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _gevent_patched() -> bool:
    """Whether gevent has patched threading (and so made our I/O thread a greenlet)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


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
        self._hello = protocol.encode_hello(Role.CLIENT, os.getpid(), group=worker_group)
        # Under gevent's monkey-patching our "thread" is a greenlet: it must poll with zmq.green,
        # or it would block the hub and every greenlet waiting on a future with it.
        zmq_module: Any = zmq.green if _gevent_patched() else zmq
        self._zmq = zmq_module
        self.context: zmq.Context[Any] = zmq_module.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A random routing id (libzmq's own are predictable): the router binds it to our key,
        # and no other peer can guess it to take over our session.
        self.socket.setsockopt(zmq.ROUTING_ID, protocol.new_peer_id())
        #: with keys: libzmq's reports on this socket's handshakes, to tell a refused key at once
        self._monitor: Any = None
        self._key = key
        if auth is not None:
            apply_client_keys(self.socket, auth, key)
            # A fresh endpoint: pyzmq's default names it after the fd, which a closed socket's
            # monitor may still hold.
            endpoint = f"inproc://squall-monitor-{os.getpid()}-{os.urandom(8).hex()}"
            self._monitor = self.socket.get_monitor_socket(_HANDSHAKE_FAILED, endpoint)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._control: collections.deque[list[Any]] = collections.deque()
        #: frames the socket would not take yet (no connection): sent first, in order
        self._unsent: collections.deque[list[Any]] = collections.deque()
        self._stats_waiters: collections.deque[concurrent.futures.Future[dict[str, Any]]] = (
            collections.deque()
        )
        self._welcome = threading.Event()
        self._last_heard = time.monotonic()
        self._last_hello = 0.0
        self._last_beat = 0.0
        self._liveness = 5.0
        self._lost = False
        self._closing = False
        self.protocol_error: SquallError | None = None
        self._trimmer = Trimmer()
        self._thread = threading.Thread(target=self._loop, name="squall-client-io", daemon=True)

    def start(self, timeout: float) -> None:
        """Connect and wait for the router's WELCOME.

        Raises:
            StartupError: no router answered within ``timeout`` seconds.
        """
        prepare_socket(self.socket, self.address)
        self.socket.connect(self.address)
        self.send(self._hello)
        self._thread.start()
        if not self._welcome.wait(timeout):
            waited = round(timeout, 1)
            raise StartupError(f"no squall router answered at {self.address} within {waited:g} s")
        if self.protocol_error is not None:
            raise self.protocol_error

    def silent_for(self) -> float:
        """Seconds since the router was last heard from (0 while it answers)."""
        return time.monotonic() - self._last_heard if self._lost else 0.0

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def send(self, frames: list[Any]) -> None:
        """Send a control message from any thread."""
        self._control.append(frames)
        self.wake()

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask the router for its counters."""
        waiter: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._stats_waiters.append(waiter)
        self.send(protocol.encode_stats_request())
        try:
            return waiter.result(timeout)
        except concurrent.futures.TimeoutError:
            # Replies come in order: a late one must not answer the next caller.
            waiter.cancel()
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
                    self._on_handshake_failed()
                if self.core.pending:
                    self._trimmer.worked()
                else:
                    self._trimmer.idle()  # a burst is over: hand freed memory back
                self._check_router()  # after reading: a stalled thread is not a silent router
            self._send_queued()
            self.socket.send_multipart(protocol.encode_disconnect(), flags=zmq.NOBLOCK)
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

    def _on_handshake_failed(self) -> None:
        """libzmq says the security handshake failed: the router refused our key (ZAP), or
        it is not the router our ``router.key`` names. Nothing will ever get through, so fail
        at once instead of waiting for a timeout."""
        while True:
            try:
                event = zmq.utils.monitor.recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                why = f"key {self._key!r} refused (ZAP status {event['value']})"
            else:
                why = f"handshake with key {self._key!r} failed: wrong router.key, or not CURVE"
            error = Refused(f"the router at {self.address} refused this key: {why}")
            log.error("router refused this client's key", router=self.address, key=self._key)
            self.protocol_error = error
            self.core.fail_all(error)
            self._welcome.set()

    def _send_queued(self) -> None:
        # Tasks first: a CANCEL (or ACK) is queued after the SUBMIT of its task and must not
        # overtake it.
        self._unsent.extend(self.core.take_outgoing())
        while self._control:
            self._unsent.append(self._control.popleft())
        self._flush()

    def _send(self, frames: list[Any]) -> None:
        self._unsent.append(frames)
        self._flush()

    def _flush(self) -> None:
        """Send what is queued without ever blocking: a DEALER with no connection (the
        handshake was refused, the router is away and the queue is at its high-water mark)
        would block a plain send, and with it this thread, which must go on polling (for the
        monitor's report of a refused key, for the router's return)."""
        while self._unsent:
            try:
                self.socket.send_multipart(self._unsent[0], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._unsent.popleft()

    def _drain(self) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except ProtocolError as exc:
                log.warning("malformed message from router dropped", error=str(exc))

    def _check_router(self) -> None:
        """Notice a router gone silent (crashed, restarting) and keep saying HELLO until one
        answers; its WELCOME then gets every unfinished task again."""
        now = time.monotonic()
        if not self._lost and now - self._last_heard > self._liveness:
            self._lost = True
            log.warning(
                "router silent; reconnecting", router=self.address, pending=len(self.core.pending)
            )
        if self._lost and now - self._last_hello > self._liveness / 3:
            self._last_hello = now
            self._send(self._hello)
        elif self._welcome.is_set() and now - self._last_beat > self._liveness / 3:
            self._last_beat = now  # heartbeats both ways: the router drops silent clients
            self._send(protocol.encode_heartbeat())

    def _handle(self, frames: list[Any]) -> None:
        self._last_heard = time.monotonic()
        type_, body = protocol.parse_header([frames[0].bytes])
        payload = frames[1:]
        if type_ is MsgType.RESULT:
            self.core.deliver(protocol.decode_result(body, payload))
        elif type_ is MsgType.ITEM:
            self.core.deliver_items(protocol.decode_items(body, payload))
        elif type_ is MsgType.FN_FETCH:
            fn_hash = protocol.decode_fn_fetch(body)
            self._send(protocol.encode_fn_body(fn_hash, self.core.body(fn_hash)))
        elif type_ is MsgType.STATS:
            stats = protocol.decode_stats(body)
            if self._stats_waiters:
                waiter = self._stats_waiters.popleft()
                if not waiter.cancelled():  # its caller gave up: this was its late reply
                    waiter.set_result(stats)
        elif type_ is MsgType.STARTED:
            self.core.started(protocol.decode_started(body, payload))
        elif type_ is MsgType.WITHDRAW:
            self.core.withdrawn(protocol.decode_withdraw(body, payload))
        elif type_ is MsgType.WELCOME:
            welcome = protocol.decode_welcome(body)
            # Five windows, not three: a router busy with a burst of a million tasks can be
            # late with a heartbeat without being gone.
            self._liveness = max(1.0, 5 * welcome.heartbeat_interval)
            if self._lost:
                self._lost = False
                if welcome.resumed:
                    # It was paused or busy, not restarted: it still holds every task of
                    # ours, and submitting them again would run finished ones twice.
                    log.warning("router back; it kept our tasks", router=self.address)
                else:
                    again = self.core.resubmit_all()
                    log.warning("router back; unfinished tasks submitted again", tasks=again)
            self._welcome.set()
        elif type_ is MsgType.ERROR:
            self._on_error(*protocol.decode_error(body))
        elif type_ is MsgType.DISCONNECT:
            log.warning("router is shutting down; will reconnect", router=self.address)
            self._lost = True

    def _on_error(self, code: int, reason: str) -> None:
        log.warning("router refused a message", code=code, reason=reason)
        if code == ErrorCode.UNKNOWN_PEER:  # the router restarted: HELLO, then resubmit
            self._lost = True
            self._last_hello = 0.0
        elif code == ErrorCode.REFUSED and not self._welcome.is_set():
            self.protocol_error = SquallError(f"router at {self.address} refused us: {reason}")
            self._welcome.set()
        elif code == ErrorCode.CUT_OFF:
            self.protocol_error = Refused(f"router at {self.address} cut this client off: {reason}")
            self.core.fail_all(self.protocol_error)
            self._welcome.set()
        elif code == ErrorCode.VERSION:
            self.protocol_error = ProtocolError(f"router at {self.address} refused us: {reason}")
            self.core.fail_all(self.protocol_error)
            self._welcome.set()
