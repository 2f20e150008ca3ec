"""The router's socket loop: reads headers, feeds :class:`RouterState`, carries out its decisions.

One ROUTER socket serves clients and workers alike; a peer says which it is in its HELLO. The loop
drains the socket in batches (a burst costs one poll, not one per message), then sends what the
state decided: TASK batches to workers, RESULT batches to clients. Payload frames are received
with ``copy=False`` and sent on as the same ``zmq.Frame`` objects, so a 50 MB array crosses the
router without being copied or looked into.

``ROUTER_MANDATORY`` is on: a send to a peer that is gone raises instead of vanishing, and the
loop treats that peer as lost (a lost worker's tasks are redelivered). A send to a peer whose
pipe is full waits in that peer's own backlog, so one slow reader never delays anyone else; a
backlog past its bound cuts the peer off.

Identity: clients and workers connect with random routing ids (:func:`protocol.new_peer_id`).
With authentication each id is bound to the key that first used it, and a message under an id
from another key is dropped: no key can take over another's session.
"""

from __future__ import annotations

import collections
import ctypes
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import zmq

from squall import protocol
from squall.auth import CLIENT, WORKER, ServerKeys, ZapHandler
from squall.config import RouterConfig, bind_router_socket, prepare_socket
from squall.errors import ProtocolError, VersionMismatch
from squall.log import get_logger
from squall.memory import Trimmer
from squall.protocol import ErrorCode, MsgType, Role, TaskItem
from squall.router.state import Limits, RouterState, frames_size

log = get_logger(__name__)
T = TypeVar("T")

#: Messages read per poll wake-up, and items per TASK/RESULT message sent.
DRAIN_BATCH = 2000
#: malformed messages one peer may send before it is cut off
GARBAGE_LIMIT = 1000
MAX_ITEMS = 1000
#: routing ids remembered with the key that first used them
MAX_OWNERS = 65_536
#: peers remembered as cut off (their messages dropped unread)
MAX_IGNORED = 65_536
#: seconds between two "you are cut off" replies to the same peer
CUT_OFF_REMINDER = 5.0
#: seconds between two "say HELLO again" replies to the same peer: a burst of stale messages
#: gets one, so the peer registers once, not once per message
UNKNOWN_PEER_REMINDER = 1.0


def _chunks(entries: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(entries), MAX_ITEMS):
        yield entries[start : start + MAX_ITEMS]


def unpredictable_auto_ids() -> None:
    """Seed libc's ``rand``, from which libzmq draws the first id it gives id-less peers.

    Unseeded, every router hands out ``00 6b8b4567``, ``00 6b8b4568``, ...: a peer holding
    those ids explicitly makes libzmq abort when the next id-less peer connects. squall's
    own peers never go without an id; from a random start, no one can hold the next one.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "big")))
    except (OSError, AttributeError):  # no libc rand to seed: libzmq seeds its own
        pass


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
            task=task_id,
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


_WORKER_ONLY = frozenset(
    {
        MsgType.RESULT,
        MsgType.ITEM,
        MsgType.FN_FETCH,
        MsgType.CREDIT,
        MsgType.TIMEOUT,
        MsgType.CRASHED,
    }
)
_CLIENT_ONLY = frozenset(
    {MsgType.SUBMIT, MsgType.FN_BODY, MsgType.ACK, MsgType.CANCEL, MsgType.WITHDRAW}
)


class RouterServer:
    """A router bound to ``config.bind``; call :meth:`serve_forever`."""

    def __init__(self, config: RouterConfig, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
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
        )
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
        #: routing id -> the ZAP user id ("client:<key>" / "worker:<key>") that first used it,
        #: with authentication on; kept after the peer leaves, so nobody can claim its id
        self._owners: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._reload_keys = False
        if config.auth is not None:
            self.keys = ServerKeys.load(config.auth)
            self.zap = ZapHandler(self.context, self.keys)  # bound before anyone can connect
            self.keys.apply(self.socket)
        self.endpoint = ""
        # What the drain pass decided to send, per peer, flushed as batches after it.
        self._results: dict[bytes, list[tuple[int, int, list[Any]]]] = collections.defaultdict(list)
        self._items: dict[bytes, list[protocol.StreamItem]] = collections.defaultdict(list)
        self._acks: dict[bytes, list[tuple[int, int]]] = collections.defaultdict(list)
        self._started: dict[bytes, list[int]] = collections.defaultdict(list)
        #: peers cut off (garbage, a revoked key, reading too slowly) -> (why, when last told):
        #: everything they send is dropped unread
        self._ignored: collections.OrderedDict[bytes, tuple[str, float]] = collections.OrderedDict()
        self._garbage: collections.Counter[bytes] = collections.Counter()
        #: peer -> messages its full pipe could not take yet
        self._backlogs: dict[bytes, _Backlog] = {}
        self._last_impostor_log = 0.0
        self._trimmer = Trimmer()
        self._failures = FailureLog()
        #: peer -> when it was last told to say HELLO again
        self._told_unknown: dict[bytes, float] = {}
        #: this router process: a client seeing a new epoch knows its tasks are gone
        self.epoch = int.from_bytes(os.urandom(8), "big")
        self._running = False
        self._handlers: dict[MsgType, Callable[[bytes, bytes, list[Any]], None]] = {
            MsgType.HELLO: self._on_hello,
            MsgType.SUBMIT: self._on_submit,
            MsgType.RESULT: self._on_result,
            MsgType.FN_BODY: self._on_fn_body,
            MsgType.FN_FETCH: self._on_fn_fetch,
            MsgType.CREDIT: self._on_credit,
            MsgType.HEARTBEAT: self._on_heartbeat,
            MsgType.DISCONNECT: self._on_disconnect,
            MsgType.STATS: self._on_stats,
            MsgType.ITEM: self._on_items,
            MsgType.ACK: self._on_ack,
            MsgType.CANCEL: self._on_cancel,
            MsgType.TIMEOUT: self._on_timeout,
            MsgType.WITHDRAW: self._on_withdraw,
            MsgType.CRASHED: self._on_crashed,
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
                wait = 0.01 if self._backlogs else max(0.0, next_beat - time.monotonic())
                events = dict(poller.poll(int(wait * 1000)))
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
                if self.state.tasks:
                    self._trimmer.worked()
                else:
                    self._trimmer.idle()  # a burst is over: hand freed memory back
                self._dispatch()
                self._flush()
                if self._backlogs:
                    self._retry_backlogs()
                if time.monotonic() >= next_beat:
                    self._on_beat()
                    next_beat = time.monotonic() + self.config.heartbeat
            log.info("router stopping", signal=stopped_by[0] if stopped_by else None)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            wake_r.close()
            wake_w.close()
            self._goodbye()
            if self.zap is not None:
                self.zap.close()

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
        for _ in range(DRAIN_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)

    def _handle(self, frames: list[Any]) -> None:
        peer = frames[0].bytes
        if peer in self._ignored:
            self._remind_cut_off(peer)
            return
        message = frames[1:]
        try:
            if self.keys is not None and message and not self._owned_by_sender(peer, message[0]):
                return
            type_, body = protocol.parse_header(message)
            handler = self._handlers.get(type_)
            if handler is None:
                raise ProtocolError(f"{type_.name} is not a message for the router")
            if type_ is MsgType.HELLO and not protocol.is_peer_id(peer):
                self.state.counters["refused"] += 1
                self._send(
                    peer,
                    protocol.encode_error(
                        ErrorCode.REFUSED,
                        "connect with a routing id of 16 random bytes (squall.protocol."
                        "new_peer_id); libzmq's own ids can be predicted and claimed",
                    ),
                )
                return
            if self.keys is not None and not self._allowed(peer, type_, body):
                self.state.counters["refused"] += 1
                self._send(
                    peer,
                    protocol.encode_error(
                        ErrorCode.REFUSED, f"{type_.name} is not allowed for your key"
                    ),
                )
                return
            self.state.seen(peer)
            handler(peer, body, message[1:])
        except VersionMismatch as exc:
            self.state.counters["protocol_errors"] += 1
            log.warning(
                "peer speaks another protocol version", peer=peer.hex(), version=exc.version
            )
            self._send(peer, protocol.encode_error(ErrorCode.VERSION, str(exc)))
        except ProtocolError as exc:
            self.state.counters["protocol_errors"] += 1
            self._garbage[peer] += 1
            if self._garbage[peer] > GARBAGE_LIMIT:
                self._cut_off(peer, f"more than {GARBAGE_LIMIT} malformed messages")
                return
            log.warning(
                "malformed message dropped",
                peer=peer.hex(),
                error=str(exc),
                frames=len(message),
                head=bytes(message[0].bytes[:32]).hex() if message else "",
            )
            self._send(peer, protocol.encode_error(ErrorCode.BAD_MESSAGE, str(exc)))
        except Exception:  # a bug must not take the router down with every task in it
            self.state.counters["internal_errors"] += 1
            log.exception("error handling message", peer=peer.hex())

    # -- authentication ---------------------------------------------------------------------

    def _owned_by_sender(self, peer: bytes, first: Any) -> bool:
        """Whether the key that sent this message is the one that first used its routing id.

        libzmq lets a new connection take over an id whose connection went away; bound to its
        first key, an id taken over by another key gets nothing through, and the session of
        the id's owner is ended here (its messages would now reach the impostor).
        """
        user = first.get("User-Id")
        owner = self._owners.get(peer)
        if owner is None:
            self._owners[peer] = user
            if len(self._owners) > MAX_OWNERS:
                self._owners.popitem(last=False)
            return True
        self._owners.move_to_end(peer)
        if owner == user:
            return True
        self.state.counters["impostors"] += 1
        if peer in self.state.workers or peer in self.state.clients:
            self._forget_peer(peer)
        now = time.monotonic()
        if now - self._last_impostor_log > 1.0:
            self._last_impostor_log = now
            log.warning(
                "message dropped: its routing id belongs to another key",
                peer=peer.hex(),
                key=user,
                owner=owner,
            )
        return False

    def _allowed(self, peer: bytes, type_: MsgType, body: bytes) -> bool:
        """Whether the sender's key (its ZAP role) may send this message.

        A client key cannot register as a worker nor report results; a worker key cannot
        submit. A watchdog may only speak for a worker of its own key.
        """
        assert self.keys is not None
        role = self.keys.role_of(self._owners[peer])
        if role is None:  # revoked since it connected
            self._cut_off(peer, "your key was revoked")
            return False
        if type_ is MsgType.HELLO:
            hello = protocol.decode_hello(body)
            return (hello.role is Role.WORKER) == (role == WORKER)
        if type_ in _WORKER_ONLY:
            return role == WORKER
        if type_ in _CLIENT_ONLY:
            return role == CLIENT
        return True

    def _reload(self) -> None:
        """SIGHUP: read the key directories again; cut off peers whose key was removed."""
        self._reload_keys = False
        assert self.keys is not None
        try:
            self.keys.reload()
        except Exception:
            log.exception("key reload failed; keeping the keys loaded before")
            return
        for peer in list(self.state.workers) + list(self.state.clients):
            user = self._owners.get(peer)
            if user is not None and self.keys.role_of(user) is None:
                self._cut_off(peer, "your key was revoked")

    # -- handlers ---------------------------------------------------------------------------

    def _on_hello(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        hello = protocol.decode_hello(body, payload)
        owner = self._owners.get(peer)
        self._told_unknown.pop(peer, None)
        if hello.role is Role.WORKER:
            known = self.state.workers.get(peer)
            resumed = known is not None and known.pid == hello.pid
            # A worker's group is its key's folder, never what it says of itself.
            group = self.keys.group_of(owner) if self.keys is not None and owner else ""
            self.state.add_worker(peer, hello.pid, hello.capacity, group)
            log.info(
                "worker joined",
                worker_pid=hello.pid,
                capacity=hello.capacity,
                group=group or None,
                workers=len(self.state.workers),
            )
        else:
            refusal = self._group_refusal(hello.group)
            if refusal is not None:
                self.state.counters["refused"] += 1
                self._send(peer, protocol.encode_error(ErrorCode.REFUSED, refusal))
                return
            resumed = peer in self.state.clients
            self.state.add_client(peer, hello.pid, owner, hello.group)
            log.info("client joined", client_pid=hello.pid, worker_group=hello.group or None)
        welcome = protocol.encode_welcome(
            self.config.heartbeat, len(self.state.workers), self.epoch, resumed
        )
        self._send(peer, welcome)

    def _group_refusal(self, group: str) -> str | None:
        """Why a client cannot be restricted to ``group``; None if it can (or asks for none)."""
        if not group:
            return None
        if self.keys is None:
            return (
                "worker groups need a router with --auth: without keys, nothing says who is in one"
            )
        if not self.keys.has_group(group):
            return f"no worker group {group!r}: the router's auth directory has no workers/{group}/"
        return None

    def _tell_unknown(self, peer: bytes) -> None:
        """Ask a peer we do not know (we restarted, or declared it dead) to say HELLO again."""
        now = time.monotonic()
        if now - self._told_unknown.get(peer, -UNKNOWN_PEER_REMINDER) < UNKNOWN_PEER_REMINDER:
            return
        self._told_unknown[peer] = now
        if len(self._told_unknown) > MAX_OWNERS:
            self._told_unknown.clear()
        self._send(peer, protocol.encode_error(ErrorCode.UNKNOWN_PEER, "say HELLO again"))

    def _on_submit(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        items = protocol.decode_submit(body, payload)
        if peer in self.state.workers:
            raise ProtocolError("a worker cannot submit tasks")
        if peer not in self.state.clients:
            # We restarted (or forgot it): it keeps every payload until the outcome arrives,
            # and submits all its unfinished tasks again once it has said HELLO.
            self._tell_unknown(peer)
            return
        self.state.submit(peer, items)

    def _on_result(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        items = protocol.decode_result(body, payload)
        if peer not in self.state.workers:
            self._tell_unknown(peer)
            self.state.counters["stale_results"] += len(items)
            return
        for item in items:
            task = self.state.complete(peer, item.task_id, item.status, item.frames)
            if task is not None:
                self._results[task.client].append((task.client_task_id, item.status, item.frames))
                if item.status == protocol.Status.ERROR:
                    self._failures.note(task.id, task.fn_hash, item.frames)

    def _on_items(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        for item in protocol.decode_items(body, payload):
            task = self.state.stream_item(peer, item.task_id, item.n_values)
            if task is not None:
                self._items[task.client].append(item._replace(task_id=task.client_task_id))

    def _on_ack(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        for client_task_id, consumed in protocol.decode_ack(body, payload):
            task = self.state.running_task(peer, client_task_id)
            if task is not None and task.worker is not None:
                self._acks[task.worker].append((task.id, consumed))

    def _on_cancel(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        for worker, task_ids in self.state.cancel(
            peer, protocol.decode_cancel(body, payload)
        ).items():
            self._send(worker, protocol.encode_cancel(task_ids))

    def _on_fn_body(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        fn_hash, fn_body = protocol.decode_fn_body(body, payload)
        limit = self.state.limits.body_size
        if len(fn_body) > limit:  # refused before it is copied or hashed
            reason = (
                f"the function's body is {len(fn_body)} bytes, over the router's limit of "
                f"{limit} (--max-body-size): pass big data as arguments, not in closures"
            )
            self.state.refuse_body(peer, fn_hash, reason)
            self._send(peer, protocol.encode_error(ErrorCode.REFUSED, reason))
            return
        fn_bytes = bytes(fn_body.buffer)
        waiting, good = self.state.body_arrived(fn_hash, fn_bytes, peer)
        for worker in waiting:
            self._send(worker, protocol.encode_fn_body(fn_hash, fn_bytes if good else b""))

    def _on_fn_fetch(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        fn_hash = protocol.decode_fn_fetch(body)
        fn_body, ask = self.state.body_for(peer, fn_hash)
        if fn_body is not None:
            self._send(peer, protocol.encode_fn_body(fn_hash, fn_body))
        elif ask is not None:
            self._send(ask, protocol.encode_fn_fetch(fn_hash))
        else:
            log.warning("function body unavailable", fn_hash=fn_hash.hex())
            self._send(peer, protocol.encode_fn_body(fn_hash, b""))

    def _on_credit(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        capacity = protocol.decode_credit(body)
        log.debug("worker credit", worker=peer.hex(), capacity=capacity)
        self.state.set_capacity(peer, capacity)

    def _on_heartbeat(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        beat = protocol.decode_heartbeat(body, payload)
        on_behalf_of = beat.on_behalf_of
        if on_behalf_of and self.keys is not None:
            # A watchdog speaks only for a worker holding its own key.
            if self._owners.get(on_behalf_of) != self._owners.get(peer):
                return
        if on_behalf_of:  # a worker's watchdog thread: its hub may be busy with a long task
            self.state.seen(on_behalf_of)
            taken = self.state.hub_report(on_behalf_of, beat.blocked_ms, beat.last_task)
            if taken:  # sent while the hub was blocked, still unread: they run elsewhere
                self._send(on_behalf_of, protocol.encode_cancel(taken))
                log.warning(
                    "worker hub blocked; its unread tasks go elsewhere",
                    blocked_s=beat.blocked_ms / 1000,
                    taken_back=len(taken),
                )
        elif peer not in self.state.workers and peer not in self.state.clients:
            self._tell_unknown(peer)

    def _on_timeout(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        worker, limit, task_ids = protocol.decode_timeout(body, payload)
        if self.keys is not None and self._owners.get(worker) != self._owners.get(peer):
            return
        if worker in self.state.workers:
            self.state.timed_out(worker, task_ids, limit)
            log.warning(
                "tasks blocked a worker past their hard time limit; it restarts",
                tasks=len(task_ids),
                limit=limit,
            )

    def _on_crashed(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        """A node says its worker process died on a signal while running ``culprits``."""
        worker, culprits = protocol.decode_crashed(body, payload)
        if self.keys is not None and self._owners.get(worker) != self._owners.get(peer):
            return  # a node speaks only for a worker of its own key
        known = worker in self.state.workers
        affected = self.state.worker_crashed(worker, culprits)
        log.warning(
            "worker process crashed",
            culprits=culprits or None,
            requeued=len(affected) if known else None,
            refunded=None if known else len(affected),
        )

    def _on_withdraw(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        """Drop tasks only if they have not started, and say which were dropped."""
        requested = [task_id for task_id, _ in protocol.decode_withdraw(body, payload)]
        answers = self.state.withdraw(peer, requested)
        for chunk in _chunks(answers):
            self._send(peer, protocol.encode_withdraw(chunk))

    def _on_disconnect(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        if peer in self.state.workers:
            requeued = self.state.remove_worker(peer, died=False)
            log.info("worker left", handed_back=len(requeued), workers=len(self.state.workers))
        elif peer in self.state.clients:
            dropped = self.state.remove_client(peer)
            log.info("client left", dropped_queued=dropped)

    def _on_stats(self, peer: bytes, body: bytes, payload: list[Any]) -> None:
        stats = self.state.stats()
        stats["backlogged_peers"] = len(self._backlogs)
        if self.keys is not None:
            # Keys may only run or submit tasks: which processes run where, and how many
            # clients there are, is no business of theirs.
            for private in ("worker_pids", "clients"):
                stats.pop(private, None)
        self._send(peer, protocol.encode_stats(stats))

    # -- sending ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for worker, tasks in self.state.dispatch():
            log.debug(
                "tasks dispatched",
                worker=worker.peer.hex(),
                tasks=len(tasks),
                first=tasks[0].id,
                redelivered=sum(t.attempt > 0 for t in tasks),
                free=worker.free,
            )
            for task in tasks:
                self._started[task.client].append(task.client_task_id)
            for chunk in _chunks(tasks):
                items = [
                    TaskItem(t.id, t.fn_hash, t.kind, t.attempt, t.window, t.deps or [], t.frames)  # type: ignore[arg-type]
                    for t in chunk
                ]
                self._send(worker.peer, protocol.encode_task(items))

    def _flush(self) -> None:
        """Send what the drain pass decided, as batches. Stream items go before results, so a
        stream's last item never overtakes its end."""
        for worker, task_ids in self.state.take_stops().items():
            self._send(worker, protocol.encode_cancel(task_ids))
        for client, client_task_id, status, frames in self.state.take_decided():
            self._results[client].append((client_task_id, status, frames))
        if self._items:
            items, self._items = self._items, collections.defaultdict(list)
            for peer, entries in items.items():
                for item_chunk in _chunks(entries):
                    self._send(peer, protocol.encode_items(item_chunk))
        if self._results:
            results, self._results = self._results, collections.defaultdict(list)
            for peer, outcomes in results.items():
                for result_chunk in _chunks(outcomes):
                    self._send(peer, protocol.encode_result(result_chunk))
        if self._started:
            started, self._started = self._started, collections.defaultdict(list)
            for peer, ids in started.items():
                for id_chunk in _chunks(ids):
                    self._send(peer, protocol.encode_started(id_chunk))
        if self._acks:
            acks, self._acks = self._acks, collections.defaultdict(list)
            for peer, counts in acks.items():
                for ack_chunk in _chunks(counts):
                    self._send(peer, protocol.encode_ack(ack_chunk))

    def _send(self, peer: bytes, frames: list[Any]) -> None:
        backlog = self._backlogs.get(peer)
        if backlog is None:
            self._try_send(peer, frames)
            return
        backlog.add(frames)  # keep order: nothing overtakes what already waits for this peer
        config = self.config
        if len(backlog.messages) > config.max_backlog or backlog.bytes > config.max_backlog_bytes:
            self._cut_off(
                peer,
                f"you read too slowly: {len(backlog.messages)} messages "
                f"({backlog.bytes} bytes) waited for you",
            )

    def _try_send(self, peer: bytes, frames: list[Any]) -> bool:
        """Send now; on a full pipe keep the message in the peer's backlog; on a gone peer,
        drop the peer."""
        try:
            self.socket.send_multipart([peer, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            backlog = self._backlogs.get(peer)
            if backlog is None:
                backlog = self._backlogs[peer] = _Backlog()
                backlog.add(frames)
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._backlogs.pop(peer, None)
            self._peer_unreachable(peer)
        return True

    def _retry_backlogs(self) -> None:
        """Send what waits, peer by peer: a full pipe stops only its own peer's messages."""
        for peer, backlog in list(self._backlogs.items()):
            while backlog.messages:
                try:
                    self.socket.send_multipart(
                        [peer, *backlog.messages[0]], flags=zmq.NOBLOCK, copy=False
                    )
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    del self._backlogs[peer]
                    self._peer_unreachable(peer)
                    break
                backlog.pop()
            else:
                del self._backlogs[peer]

    def _cut_off(self, peer: bytes, reason: str) -> None:
        """Stop serving a peer (garbage, a revoked key, too slow a reader): its state and
        backlog go, and its messages are dropped unread from now on (a ROUTER cannot hang up
        on one peer). It is told why, so that a client fails its futures instead of hanging.
        """
        self._ignored[peer] = (reason, time.monotonic())
        if len(self._ignored) > MAX_IGNORED:
            self._ignored.popitem(last=False)
        self._backlogs.pop(peer, None)
        self.state.counters["peers_cut_off"] += 1
        self._forget_peer(peer)
        log.warning("peer cut off", peer=peer.hex(), reason=reason)
        self._tell_cut_off(peer, reason)

    def _remind_cut_off(self, peer: bytes) -> None:
        reason, told = self._ignored[peer]
        now = time.monotonic()
        if now - told >= CUT_OFF_REMINDER:
            self._ignored[peer] = (reason, now)
            self._tell_cut_off(peer, reason)

    def _tell_cut_off(self, peer: bytes, reason: str) -> None:
        try:  # best effort, never into a backlog: the peer may be the one not reading
            self.socket.send_multipart(
                [peer, *protocol.encode_error(ErrorCode.CUT_OFF, reason)], flags=zmq.NOBLOCK
            )
        except zmq.ZMQError:
            pass

    def _forget_peer(self, peer: bytes) -> None:
        if peer in self.state.workers:
            self.state.remove_worker(peer)
        elif peer in self.state.clients:
            self.state.remove_client(peer)

    def _peer_unreachable(self, peer: bytes) -> None:
        if peer in self.state.workers:
            requeued = self.state.remove_worker(peer)
            log.warning("worker unreachable", requeued=len(requeued))
        elif peer in self.state.clients:
            self.state.remove_client(peer)
            log.warning("client unreachable; its results are dropped")

    # -- timers -----------------------------------------------------------------------------

    def _on_beat(self) -> None:
        beat = protocol.encode_heartbeat()
        for peer in list(self.state.workers) + list(self.state.clients):
            self._send(peer, beat)
        for peer in self.state.expired_workers():
            requeued = self.state.remove_worker(peer)
            log.warning(
                "worker silent past liveness window; declared dead",
                liveness=self.config.liveness,
                requeued=len(requeued),
            )
        for peer in self.state.expired_clients():
            dropped = self.state.remove_client(peer)
            log.warning("client silent; its queued tasks are dropped", dropped=dropped)
        parent = self.config.parent_pid
        if parent is not None and os.getppid() != parent:
            log.info("parent process gone; router exits", parent_pid=parent)
            self._running = False

    def _goodbye(self) -> None:
        bye = protocol.encode_disconnect()
        for peer in list(self.state.workers) + list(self.state.clients):
            try:
                self.socket.send_multipart([peer, *bye], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.socket.close(linger=0)
