"""The router's socket loop: feeds each message to :class:`RouterState`, sends what it decided.

One ROUTER socket serves clients and workers alike. The loop drains the socket in batches (a
burst costs one poll, not one per message), hands every message to the state, then encodes and
sends the state's instructions in the order it gave them (:mod:`squall.router.instructions`).
What to send, to whom, and who may say what are the state's decisions; this module decides only
socket-level matters. Payload frames are received with ``copy=False`` and sent on as the same
``zmq.Frame`` objects, so a 50 MB array crosses the router without being copied or looked into.

``ROUTER_MANDATORY`` is on: a send to a peer that is gone raises instead of vanishing, and the
loop treats that peer as lost (a lost worker's tasks are redelivered). A send to a peer whose
pipe is full waits in that peer's own backlog, so one slow reader never delays anyone else; a
backlog past its bound cuts the peer off.

Identity: clients and workers connect with random routing ids (:func:`protocol.new_peer_id`).
With authentication the ZAP handler here admits listed keys, and each message goes to the state
with the key it came under; the state binds each id to the key that first used it.
"""

from __future__ import annotations

import collections
import ctypes
import math
import os
import pickle
import resource
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import zmq

from squall import libc, protocol, transport
from squall.auth import ServerKeys, ZapHandler
from squall.config import DRAIN_BATCH, RouterConfig, bind_router_socket, prepare_socket
from squall.errors import ProtocolError
from squall.log import get_logger
from squall.memory import Trimmer
from squall.procinfo import resident_bytes
from squall.protocol import ErrorCode, TaskFlag, TaskItem
from squall.router.instructions import (
    CutOff,
    Log,
    Send,
    SendAcks,
    SendAnswer,
    SendBody,
    SendCancel,
    SendEnqueued,
    SendError,
    SendEvents,
    SendFetch,
    SendHeartbeats,
    SendItems,
    SendResults,
    SendStarted,
    SendStats,
    SendTasks,
    SendWelcome,
    SendWithdrawn,
    TaskFailed,
)
from squall.router.model import Limits, Task, frames_size
from squall.router.policy import STARTED_DELAY
from squall.router.state import RouterState
from squall.router.store import open_store

if TYPE_CHECKING:
    from squall.metrics import MetricsServer

log = get_logger(__name__)

#: events in one EVENTS message at the most (a burst goes out as several)
EVENTS_PER_MESSAGE = 5_000

#: the instructions that are a peer and a list of entries, and what encodes a batch of them
_BATCHES: dict[type, Callable[[Any], list[Any]]] = {
    SendResults: protocol.encode_result,
    SendItems: protocol.encode_items,
    SendStarted: protocol.encode_started,
    SendAcks: protocol.encode_ack,
    SendCancel: protocol.encode_cancel,
    SendWithdrawn: protocol.encode_withdraw,
}


def unpredictable_auto_ids() -> None:
    """Seed libc's ``rand``, from which libzmq draws the first id it gives id-less peers.

    Unseeded, every router hands out ``00 6b8b4567``, ``00 6b8b4568``, ...: a peer holding
    those ids explicitly makes libzmq abort when the next id-less peer connects. squall's
    own peers never go without an id; from a random start, no one can hold the next one.
    """
    srand = getattr(libc.load(), "srand", None)
    if srand is not None:  # else no libc rand to seed: libzmq seeds its own
        srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "big")))


class FailureLog:
    """One warning per failed task, at most ``per_second`` a second; the rest are counted and
    summed up in the next line, so a flood of failures cannot flood the log.

    It reads the outcome's JSON summary (the error's type and message), never its pickle.
    """

    def __init__(
        self,
        per_second: int = 10,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[..., Any] | None = None,
    ) -> None:
        self.per_second = per_second
        self._clock = clock
        self._emit = emit or log.warning
        self._window = 0.0
        self._logged = 0
        self._suppressed = 0

    def note(self, task_id: int, fn_hash: bytes, frames: list[Any]) -> None:
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._logged = now, 0
        if self._logged >= self.per_second:
            self._suppressed += 1
            return
        self._logged += 1
        try:
            summary = protocol.read_error_summary(frames[0]) if frames else None
        except ProtocolError:
            summary = None
        self._emit(
            "task failed",
            task_id=f"{task_id:016x}",
            function=(summary and summary.function) or fn_hash.hex(),
            error=summary.type if summary else "?",
            message=summary.message[:200] if summary else "",
            **({"not_logged_before": self._suppressed} if self._suppressed else {}),
        )
        self._suppressed = 0


class _Backlog:
    """Messages for one peer whose pipe was full, in order, and their size."""

    __slots__ = ("messages", "bytes")

    def __init__(self) -> None:
        self.messages: collections.deque[list[Any]] = collections.deque()
        self.bytes = 0

    def add(self, frames: list[Any]) -> None:
        self.messages.append(frames)
        self.bytes += frames_size(frames)

    def pop(self) -> None:
        self.bytes -= frames_size(self.messages.popleft())


def forbid_unpickling() -> None:
    """Make every pickle loader in this process raise.

    The router must never unpickle what it forwards (that would run a stranger's code in the
    process everyone trusts). This turns the rule into a guarantee the tests can check.
    """

    def refuse(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the squall router never unpickles")

    pickle.loads = refuse
    pickle.load = refuse
    pickle.Unpickler = refuse  # type: ignore[assignment,misc]


class RouterServer:
    """A router bound to ``config.bind``; call :meth:`serve_forever`."""

    def __init__(self, config: RouterConfig, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.context = context or zmq.Context()
        unpredictable_auto_ids()  # before the socket: libzmq draws its first id when made
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.LINGER, 0)
        # ZeroMQ drops the connection of a peer sending a bigger message, before we read it.
        self.socket.setsockopt(zmq.MAXMSGSIZE, config.max_message_size)
        self.socket.setsockopt(zmq.HANDSHAKE_IVL, int(config.handshake_timeout * 1000))
        self.keys: ServerKeys | None = None
        self.zap: ZapHandler | None = None
        self._reload_keys = False
        if config.auth is not None:
            self.keys = ServerKeys.load(config.auth)
            self.zap = ZapHandler(self.context, self.keys)  # bound before anyone can connect
            self.keys.apply(self.socket)
        self.state = RouterState(
            liveness=config.liveness,
            max_worker_deaths=config.max_worker_deaths,
            blocked_after=2 * config.heartbeat,
            limits=Limits(
                max_queued=config.max_queued,
                client_bytes=config.max_client_bytes,
                held_bytes=config.max_held_bytes,
                recent_bytes=config.max_recent_bytes,
                body_size=config.max_body_size,
            ),
            authority=self.keys,
            started_delay=STARTED_DELAY,
            store=open_store(config.data, config.fsync, config.max_kept_bytes),
            result_ttl=config.result_ttl,
            history=config.history,
        )
        self.started_at = time.time()
        self.state.process_info = self.process_info
        for queue, count, period, concurrency in config.queue_limits:
            self.state.limiter.set(queue, count, period, concurrency)
        if config.data is not None:
            log.info(
                "background tasks kept on disk",
                data=config.data,
                fsync=config.fsync,
                recovered=len(self.state.kept),
                running_at_stop=len(self.state.limbo),
            )
        self.endpoint = ""
        #: peer -> messages its full pipe could not take yet
        self._backlogs: dict[bytes, _Backlog] = {}
        self._trimmer = Trimmer()
        self._failures = FailureLog()
        #: this router process: a client seeing a new epoch knows its tasks are gone
        self.epoch = int.from_bytes(os.urandom(8), "big")
        self._running = False
        #: with --metrics-bind: the "metrics" answer as of the last heartbeat, which the
        #: metrics thread reads (it never touches the state, which is not thread-safe)
        self.metrics_snapshot: dict[str, Any] | None = None
        self._metrics_server: MetricsServer | None = None

    def process_info(self) -> dict[str, Any]:
        """This router process's own figures, for status and metrics."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            open_fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            open_fds = None
        return {
            "pid": os.getpid(),
            "started": self.started_at,
            "uptime": time.time() - self.started_at,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "rss": resident_bytes(),
            "open_fds": open_fds,
            "endpoint": self.endpoint,
            "backlogged_peers": len(self._backlogs),
        }

    def bind(self) -> str:
        """Bind the socket; return the endpoint actually bound (with the real port).

        Without authentication an ipc socket is made private (mode 0600): its file mode is
        then all that keeps other local users from running code on the workers.
        """
        prepare_socket(self.socket, self.config.bind)
        self.endpoint = bind_router_socket(
            self.socket, self.config.bind, private=self.config.auth is None
        )
        if self.config.metrics_bind is not None:
            from squall.metrics import serve  # ConfigError: no prometheus_client, or no bind

            self.metrics_snapshot = self.state.metrics()
            self._metrics_server = serve(self.config.metrics_bind, lambda: self.metrics_snapshot)
        return self.endpoint

    # -- loop -------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT, or until the parent process (if any) is gone.

        Signals only set a flag: Python also runs handlers inside pyzmq's C code, where an
        exception raised from one can be discarded. The interpreter writes each signal to a
        socket the poll watches, so the flag is seen at once.
        """
        stopped_by: list[str] = []

        def stop(signum: int, _: Any) -> None:
            stopped_by.append(signal.Signals(signum).name)
            self._running = False

        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

        def reload_keys(signum: int, _: Any) -> None:
            self._reload_keys = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload_keys)
        self._running = True
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        if self.zap is not None:
            poller.register(self.zap.socket, zmq.POLLIN)
        next_beat = last_turn = time.monotonic()
        last_cpu = time.process_time()
        try:
            while self._running:
                due = min(next_beat, self.state.started_due(), self.state.next_due())
                wait = 0.01 if self._backlogs else max(0.0, due - time.monotonic())
                events = dict(poller.poll(math.ceil(wait * 1000)))  # never a busy 0 ms
                now = time.monotonic()
                if now - last_turn > wait + self.config.liveness / 2:
                    self._stalled(now - last_turn - wait, time.process_time() - last_cpu)
                last_turn, last_cpu = now, time.process_time()
                if wake_r.fileno() in events:  # a signal arrived, its handler ran: empty the pipe
                    try:
                        wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                if self.zap is not None and self.zap.socket in events:
                    self.zap.handle()
                if self._reload_keys:
                    self._reload()
                if self.socket in events:
                    self._drain()
                if self.socket in events:
                    self._trimmer.worked()
                else:
                    # A quiet turn (tasks may be held for later): hand freed memory back.
                    self._trimmer.idle()
                if time.monotonic() >= next_beat:
                    self._on_beat()
                    next_beat = time.monotonic() + self.config.heartbeat
                self._flush()
                if self._backlogs:
                    self._retry_backlogs()
            log.info("router stopping", signal=stopped_by[0] if stopped_by else None)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            wake_r.close()
            wake_w.close()
            self._goodbye()
            self.state.store.close()
            if self.zap is not None:
                self.zap.close()
            if self._metrics_server is not None:
                self._metrics_server.close()

    def _stalled(self, seconds: float, cpu: float) -> None:
        """The loop did not poll for ``seconds``: it was stopped (SIGSTOP, a swapped-out VM)
        or busy with a huge burst. Either way our peers' silence is ours, not theirs."""
        self.state.forgive_silence()
        if cpu < seconds / 2:
            log.warning("router was not running; peers keep their leases", stalled=seconds)
        else:
            log.info("router was busy; peers keep their leases", busy=seconds)

    def stop(self) -> None:
        self._running = False

    def _drain(self) -> None:
        state, keys = self.state, self.keys
        for _ in range(DRAIN_BATCH):
            try:
                frames: list[Any] = transport.recv(self.socket)
            except zmq.Again:
                return
            message = frames[1:]
            # With authentication, the key it came under (ZAP's User-Id): the state binds
            # routing ids to keys and applies the role rules.
            user = message[0].get("User-Id") if keys is not None and message else None
            state.handle(frames[0].bytes, message, user)

    def _reload(self) -> None:
        """SIGHUP: read the key directories again; cut off peers whose key was removed."""
        self._reload_keys = False
        assert self.keys is not None
        try:
            self.keys.reload()
        except Exception:
            log.exception("key reload failed; keeping the keys loaded before")
            return
        self.state.keys_reloaded()

    # -- sending ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Commit the store, then encode and send what the state decided, in its order.

        The commit comes first: an ENQUEUED must never reach a client before what it
        confirms is on disk. One commit per loop turn groups every enqueue of the turn into
        one disk sync. Sending can make the state decide more (a peer found gone, a backlog
        past its bound): that goes out in the same turn."""
        state = self.state
        if state.store.dirty:
            state.store.commit()
        while sends := state.take_sends():
            for send in sends:
                self._carry_out(send)

    def _carry_out(self, send: Send) -> None:
        encode = _BATCHES.get(type(send))
        if encode is not None:  # (peer, entries): as many messages as MAX_ITEMS makes
            peer, entries = cast("tuple[bytes, list[Any]]", send)
            for batch in protocol.batches(entries):
                self._send(peer, encode(batch))
        elif isinstance(send, SendTasks):
            self._send_tasks(send.worker, send.tasks)
        elif isinstance(send, TaskFailed):
            self._failures.note(send.task_id, send.fn_hash, send.frames)
        elif isinstance(send, Log):
            getattr(log, send.level)(send.event, **send.fields)
        elif isinstance(send, SendError):
            self._send(send.peer, protocol.encode_error(send.code, send.text))
        elif isinstance(send, SendWelcome):
            heartbeat = self.config.heartbeat
            welcome = protocol.encode_welcome(heartbeat, send.workers, self.epoch, send.resumed)
            self._send(send.peer, welcome)
        elif isinstance(send, SendBody):
            self._send(send.peer, protocol.encode_fn_body(send.fn_hash, send.body))
        elif isinstance(send, SendFetch):
            self._send(send.peer, protocol.encode_fn_fetch(send.fn_hash))
        elif isinstance(send, SendEnqueued):
            for batch in protocol.batches(send.task_ids):
                self._send(send.client, protocol.encode_enqueued(batch))
        elif isinstance(send, SendAnswer):
            self._send(send.peer, protocol.encode_answer(send.request, send.answer))
        elif isinstance(send, SendStats):
            stats = {**send.stats, "backlogged_peers": len(self._backlogs)}
            self._send(send.peer, protocol.encode_stats(stats))
        elif isinstance(send, SendEvents):
            for start in range(0, len(send.events), EVENTS_PER_MESSAGE):
                message = protocol.encode_events(send.events[start : start + EVENTS_PER_MESSAGE])
                for peer in send.peers:
                    self._send(peer, list(message))
        elif isinstance(send, SendHeartbeats):
            beat = protocol.encode_heartbeat()
            for peer in send.peers:
                self._send(peer, beat)
        elif isinstance(send, CutOff):
            self._backlogs.pop(send.peer, None)
            self._tell_cut_off(send.peer, send.reason)

    def _send_tasks(self, worker: bytes, tasks: list[Task]) -> None:
        known = self.state.workers.get(worker)
        log.debug(
            "tasks dispatched",
            worker=worker.hex(),
            tasks=len(tasks),
            first=tasks[0].id,
            redelivered=sum(t.attempt > 0 for t in tasks),
            free=known.free if known is not None else 0,
        )
        for batch in protocol.batches(tasks):
            items = [
                TaskItem(
                    t.id,
                    t.fn_hash,
                    t.kind,
                    t.attempt,
                    t.window,
                    t.deps or [],  # type: ignore[arg-type]
                    t.frames,
                    TaskFlag.KEPT if t.key else 0,
                )
                for t in batch
            ]
            self._send(worker, protocol.encode_task(items))

    def _send(self, peer: bytes, frames: list[Any]) -> None:
        backlog = self._backlogs.get(peer)
        if backlog is None:
            self._try_send(peer, frames)
            return
        backlog.add(frames)  # keep order: nothing overtakes what already waits for this peer
        config = self.config
        if len(backlog.messages) > config.max_backlog or backlog.bytes > config.max_backlog_bytes:
            del self._backlogs[peer]
            self.state.cut_off(
                peer,
                f"you read too slowly: {len(backlog.messages)} messages "
                f"({backlog.bytes} bytes) waited for you",
            )

    def _try_send(self, peer: bytes, frames: list[Any]) -> None:
        """Send now; on a full pipe keep the message in the peer's backlog; on a gone peer,
        tell the state."""
        try:
            transport.send(self.socket, frames, peer)
        except zmq.Again:
            backlog = self._backlogs.get(peer)
            if backlog is None:
                backlog = self._backlogs[peer] = _Backlog()
                backlog.add(frames)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._backlogs.pop(peer, None)
            self.state.peer_unreachable(peer)

    def _retry_backlogs(self) -> None:
        """Send what waits, peer by peer: a full pipe stops only its own peer's messages."""
        for peer, backlog in list(self._backlogs.items()):
            while backlog.messages:
                try:
                    transport.send(self.socket, backlog.messages[0], peer)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    del self._backlogs[peer]
                    self.state.peer_unreachable(peer)
                    break
                backlog.pop()
            else:
                del self._backlogs[peer]
        self._flush()  # what a peer found gone made the state decide

    def _tell_cut_off(self, peer: bytes, reason: str) -> None:
        try:  # best effort, never into a backlog: the peer may be the one not reading
            self.socket.send_multipart(
                [peer, *protocol.encode_error(ErrorCode.CUT_OFF, reason)], flags=zmq.NOBLOCK
            )
        except zmq.ZMQError:
            pass

    # -- timers -----------------------------------------------------------------------------

    def _on_beat(self) -> None:
        self.state.tick()
        if self._metrics_server is not None:
            self.metrics_snapshot = self.state.metrics()
        parent = self.config.parent_pid
        if parent is not None and os.getppid() != parent:
            log.info("parent process gone; router exits", parent_pid=parent)
            self._running = False

    def _goodbye(self) -> None:
        bye = protocol.encode_disconnect()
        for peer in list(self.state.workers) + [c for c in self.state.clients if c]:
            try:
                self.socket.send_multipart([peer, *bye], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.socket.close(linger=0)
