"""The asyncio driver: the client's DEALER socket on the running event loop, over zmq.asyncio.

No thread: the loop reads the socket (a task awaiting readability, then draining what came
without waiting, so messages are handled in the order they arrived), a timer task hands the
core the time for liveness, and the callers' submits, made in the loop, are sent by one
callback per burst. As in the threaded driver the
:class:`ClientCore` decides everything; this only reads and sends. Every send is non-blocking:
a DEALER with no connection (a refused CURVE handshake) would never take it, and what it does
not take waits for room (``POLLOUT``) while the loop goes on (to read the monitor's report).

Sends and the draining reads go through a shadow of the socket (``zmq.Socket.shadow``, the
same libzmq socket, used from this thread only). ZeroMQ's file descriptor is edge-triggered, so
after those, whatever arrived meanwhile is read here rather than left for a notification that
already passed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from typing import Any

import zmq
import zmq.asyncio
import zmq.utils.monitor

from squall import transport
from squall.client._core import ClientCore, Step
from squall.client.sync import client_socket
from squall.config import DRAIN_BATCH, prepare_socket
from squall.errors import ExecutorShutdown, ProtocolError, SquallError, StartupError
from squall.log import get_logger
from squall.memory import Trimmer

log = get_logger(__name__)

#: seconds between two liveness checks (the threaded driver's poll timeout)
TICK = 0.25


class AsyncioDriver:
    """Moves the core's messages over a zmq.asyncio DEALER connected to ``address``.

    Made anywhere; :meth:`start` in the event loop that will own it.
    """

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
        self.context = zmq.asyncio.Context()
        socket, monitor = client_socket(self.context, auth, key)
        self._monitor: Any = monitor  # a zmq.asyncio socket, as its context makes them
        self.socket: zmq.asyncio.Socket = socket  # type: ignore[assignment]
        self._async_socket: Any = socket  # (pyzmq's stubs give poll() no flags)
        self._raw: zmq.Socket[Any] = zmq.Socket.shadow(self.socket.underlying)
        #: frames the socket would not take yet (no connection): sent first, in order
        self._unsent: collections.deque[list[Any]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._settled: asyncio.Future[None] | None = None
        self._wake_scheduled = False
        self._drain_scheduled = False
        self._closing = False
        self._trimmer = Trimmer()

    def start(self) -> None:
        """Connect and say HELLO, in the running loop; :meth:`ready` waits for the answer."""
        loop = self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self.core.io_thread = threading.current_thread()
        self._settled = loop.create_future()
        prepare_socket(self.socket, self.address)
        self.socket.connect(self.address)
        self._carry_out(
            self.core.open(self.address, time.monotonic(), os.getpid(), self._key, self._group)
        )
        self._tasks = [
            loop.create_task(self._read(), name="squall-client-read"),
            loop.create_task(self._beat(), name="squall-client-liveness"),
        ]
        if self._monitor is not None:
            self._tasks.append(loop.create_task(self._watch_handshakes()))
        self._flush()

    async def ready(self, timeout: float) -> None:
        """Wait for the router's WELCOME.

        Raises:
            StartupError: no router answered within ``timeout`` seconds.
            SquallError: the router refused us (the core's ``error``).
        """
        assert self._settled is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._settled), timeout)
        except asyncio.TimeoutError:
            waited = round(timeout, 1)
            raise StartupError(
                f"no squall router answered at {self.address} within {waited:g} s"
            ) from None
        if self.core.error is not None:
            raise self.core.error

    def silent_for(self) -> float:
        return self.core.silent_for(time.monotonic())

    def wake(self) -> None:
        """Send what the core has queued: soon, in the loop (one callback per burst)."""
        if self._wake_scheduled or self._closing or self._loop is None:
            return
        self._wake_scheduled = True
        if threading.get_ident() == self._thread_id:
            self._loop.call_soon(self._woken)
            return
        try:
            self._loop.call_soon_threadsafe(self._woken)
        except RuntimeError:  # the loop is closed: nothing can be sent any more
            pass

    def send_now(self) -> None:
        """Send what the core has queued, now: only in the loop's thread (the socket's)."""
        if not self._closing and threading.get_ident() == self._thread_id:
            self._send_queued()

    def send(self, frames: list[Any]) -> None:
        """Send a message from any thread."""
        self.core.post(frames)
        self.wake()

    async def astats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask the router for its counters.

        Raises:
            asyncio.TimeoutError: no answer within ``timeout`` seconds.
        """
        assert self._loop is not None
        waiter: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self.core.ask_stats(waiter)
        self.wake()
        return await asyncio.wait_for(waiter, timeout)  # cancelled on timeout: see ask_stats

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """The counters, from another thread than the loop's (there: ``await astats()``)."""
        if self._loop is None or threading.get_ident() == self._thread_id:
            raise RuntimeError("in the event loop, use 'await AsyncExecutor.stats()'")
        pending = asyncio.run_coroutine_threadsafe(self.astats(timeout), self._loop)
        return pending.result(timeout + 1.0)

    def close(self) -> None:
        """Say DISCONNECT (if the socket takes it at once) and close the socket."""
        if self._closing:
            return
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread_id and loop.is_running():
            loop.call_soon_threadsafe(self.close)  # the socket is the loop's
            return
        self._closing = True
        current = asyncio.current_task() if loop is not None and loop.is_running() else None
        for task in [*self._tasks, self._writer]:
            if task is not None and task is not current:
                task.cancel()
        try:
            self._send_queued()
            self._unsent.append(self.core.goodbye())
            self._flush()
        except zmq.ZMQError:
            pass
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
        self.socket.close(linger=0)
        self.context.term()

    # -- in the loop ------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                # Wait for readability, then read with the shadow only: a recv future of
                # zmq.asyncio resumes this task a callback later, by when a drain may have
                # read the messages after it, and their order (a stream's last values, then
                # its end) would be lost.
                await self._async_socket.poll(None, zmq.POLLIN)
                self._drain()
        except asyncio.CancelledError:
            if not self._closing:  # the loop is ending (asyncio.run's end) with us still open
                self.core.fail_all(ExecutorShutdown("the event loop closed before the task ended"))
                self.close()
            raise
        except Exception as exc:
            if not self._closing:
                log.exception("client I/O stopped")
                self.core.fail_all(SquallError(f"the client's I/O stopped: {exc!r}"))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._drain()  # first: a loop that could not run has not heard a talking router
            self._carry_out(self.core.tick(time.monotonic()))
            self._send_queued()

    async def _watch_handshakes(self) -> None:
        assert self._monitor is not None
        while True:
            event = zmq.utils.monitor.parse_monitor_message(await self._monitor.recv_multipart())
            refused = event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            self._carry_out(self.core.handshake_failed(refused, event["value"]))
            self._flush()

    async def _wait_for_room(self) -> None:
        try:
            while self._unsent:
                await self._async_socket.poll(None, zmq.POLLOUT)
                self._flush()
        finally:
            self._writer = None

    def _carry_out(self, step: Step) -> None:
        self._unsent.extend(step.send)
        step.deliver()
        if self.core.settled and self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    def _woken(self) -> None:
        self._wake_scheduled = False
        if not self._closing:
            self._send_queued()

    def _drain(self) -> None:
        """Hand the core what has arrived, in order, then send what that queued."""
        self._drain_scheduled = False
        if self._closing:
            return
        for _ in range(DRAIN_BATCH):
            try:
                frames = transport.recv(self._raw)
            except zmq.Again:
                break
            self._receive(frames)
        if self.core.pending:
            self._trimmer.worked()
        else:
            self._trimmer.idle()
        self._send_queued()

    def _receive(self, frames: list[Any]) -> None:
        try:
            self._carry_out(self.core.receive(frames, time.monotonic()))
        except ProtocolError as exc:
            log.warning("malformed message from router dropped", error=str(exc))

    def _send_queued(self) -> None:
        self._unsent.extend(self.core.take_outgoing())
        self._flush()

    def _flush(self) -> None:
        """Send what is queued without ever blocking; what the socket will not take yet
        waits for room in a task of its own."""
        unsent, raw = self._unsent, self._raw
        if not unsent:
            return
        while unsent:
            try:
                transport.send(raw, unsent[0])
            except zmq.Again:
                if self._writer is None and self._loop is not None and not self._closing:
                    self._writer = self._loop.create_task(self._wait_for_room())
                break
            unsent.popleft()
        # The send may have taken the descriptor's edge for a message that came meanwhile.
        if (
            not self._drain_scheduled
            and not self._closing
            and self._loop is not None
            and transport.readable(raw)
        ):
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)
