"""The router's core: who may say what, queues, credits, liveness and redelivery, no sockets.

``RouterState`` takes messages as they arrived (:meth:`RouterState.handle`: the peer, its key's
ZAP user id, the frames) and the passing of time (:meth:`RouterState.tick`), and answers with
instructions (:mod:`squall.router.instructions`) in one outbox, in the order they must go out
(:meth:`RouterState.take_sends`). ``router.server`` only encodes and sends them: membership,
role rules, garbage counting and cut-offs, STARTED and ack translation and every counter are
decided here, so they are tested in microseconds, without processes or sockets.

Payload frames are carried as opaque objects; nothing here looks inside them.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from squall import protocol
from squall.auth import CLIENT, WORKER
from squall.config import CLIENT_LIVENESS_WINDOWS
from squall.errors import ProtocolError, VersionMismatch
from squall.protocol import (
    ErrorCode,
    FailureCode,
    MsgType,
    Role,
    Status,
    StreamItem,
    SubmitItem,
    failure_outcome,
)
from squall.router.fairqueue import FairQueue
from squall.router.instructions import (
    CutOff,
    Log,
    Send,
    SendAcks,
    SendBody,
    SendCancel,
    SendError,
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
from squall.router.model import BodyCache as BodyCache  # (re-exported: the state's vocabulary)
from squall.router.model import Client, Worker, frames_size
from squall.router.model import Limits as Limits
from squall.router.model import Task as Task

#: what each worker-reported outcome counts as in ``stats()`` (a router-made failure, such as
#: a lost worker or a timeout, has a counter of its own)
_OUTCOME_COUNTERS: dict[int, str] = {
    Status.OK: "succeeded",
    Status.ERROR: "failed",
    Status.CANCELLED: "stopped",
}

#: a task whose worker died this often runs alone on a worker from then on, so that a task
#: that kills its worker is told apart from the tasks that merely shared the process with it
ISOLATE_AFTER = 2
#: a client is declared gone after this many liveness windows of silence
CLIENT_LIVENESS = CLIENT_LIVENESS_WINDOWS
#: malformed messages one peer may send before it is cut off
GARBAGE_LIMIT = 1000
#: routing ids remembered with the key that first used them
MAX_OWNERS = 65_536
#: peers remembered as cut off (their messages dropped unread)
MAX_IGNORED = 65_536
#: seconds between two "you are cut off" replies to the same peer
CUT_OFF_REMINDER = 5.0
#: seconds between two "say HELLO again" replies to the same peer: a burst of stale messages
#: gets one, so the peer registers once, not once per message
UNKNOWN_PEER_REMINDER = 1.0

#: messages only a worker's key may send, and only a client's
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


def _no_body(body: bytes, payload: Sequence[Any]) -> None:
    return None


#: the thin decode step: message type -> what turns its header body and payload frames into
#: the decoded message its ``_on_*`` handler takes (``squall.protocol`` does the reading)
_DECODERS: dict[MsgType, Callable[[bytes, Sequence[Any]], Any]] = {
    MsgType.HELLO: protocol.decode_hello,
    MsgType.SUBMIT: protocol.decode_submit,
    MsgType.RESULT: protocol.decode_result,
    MsgType.FN_BODY: protocol.decode_fn_body,
    MsgType.FN_FETCH: lambda body, _: protocol.decode_fn_fetch(body),
    MsgType.CREDIT: lambda body, _: protocol.decode_credit(body),
    MsgType.HEARTBEAT: protocol.decode_heartbeat,
    MsgType.DISCONNECT: _no_body,
    MsgType.STATS: _no_body,
    MsgType.ITEM: protocol.decode_items,
    MsgType.ACK: protocol.decode_ack,
    MsgType.CANCEL: protocol.decode_cancel,
    MsgType.TIMEOUT: protocol.decode_timeout,
    MsgType.WITHDRAW: protocol.decode_withdraw,
    MsgType.CRASHED: protocol.decode_crashed,
}

#: every counter ``stats()`` reports, all there from the start (one stable set of keys)
COUNTERS = (
    "submitted",
    "cancelled",
    "dispatched",
    "completed",
    "succeeded",
    "failed",
    "stopped",
    "redelivered",
    "worker_deaths",
    "worker_lost",
    "timed_out",
    "refused_full",
    "refused_bytes",
    "refused_bodies",
    "refused_dependencies",
    "unknown_bodies",
    "duplicate_submits",
    "taken_back",
    "deaths_refunded",
    "refused",
    "impostors",
    "peers_cut_off",
    "stale_results",
    "bodies_received",
    "bodies_sent",
    "bad_bodies",
    "protocol_errors",
    "internal_errors",
)


class Authority(Protocol):
    """What the core needs of the keys (``squall.auth.ServerKeys``): a key's role and group.

    Authentication only maps a key to a role; which role may send what is decided here.
    """

    def role_of(self, user_id: str) -> str | None: ...

    def group_of(self, user_id: str) -> str: ...

    def has_group(self, name: str) -> bool: ...


class RouterState:
    """Everything the router knows and decides.

    Args:
        liveness: seconds of silence after which a worker is declared dead.
        max_worker_deaths: a task whose worker dies this many times while running it fails
            with ``WorkerLost`` instead of running again.
        max_queued: tasks one client may have waiting in the router; more are refused
            (shorthand for ``limits.max_queued``).
        clock: monotonic time source (tests pass a fake one).
        limits: byte and count bounds on what the router holds.
        blocked_after: seconds a worker's hub may be reported blocked before it gets no new
            tasks and those sent to it but not yet read are taken back.
        authority: the router's keys with authentication on (each message then comes with the
            ZAP user id of its key); None without.
    """

    def __init__(
        self,
        liveness: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        max_worker_deaths: int = 3,
        max_queued: int | None = None,
        limits: Limits | None = None,
        blocked_after: float = 2.0,
        authority: Authority | None = None,
    ) -> None:
        self.liveness = liveness
        self.authority = authority
        self.blocked_after = blocked_after
        self.clock = clock
        self.max_worker_deaths = max_worker_deaths
        limits = limits or Limits()
        if max_queued is not None:
            limits = dataclasses.replace(limits, max_queued=max_queued)
        self.limits = limits
        self.max_queued = limits.max_queued
        #: argument bytes held, per client and in all
        self.bytes_by_client: collections.Counter[bytes] = collections.Counter()
        self.held_bytes = 0
        #: bytes of the outcomes in ``recent``
        self.recent_bytes = 0
        #: scope -> function hashes it uploaded itself: a task may only name a body its own
        #: scope sent, so knowing another client's hash grants nothing
        self.uploaded: dict[str, collections.OrderedDict[bytes, None]] = {}
        #: (scope, hash) -> why its body was refused, to fail its tasks with the reason
        self.refused_bodies: collections.OrderedDict[tuple[str, bytes], str] = (
            collections.OrderedDict()
        )
        #: tasks that run alone (see ISOLATE_AFTER), FIFO, dispatched before the queue
        self.suspects: collections.deque[Task] = collections.deque()
        self.queued_by_client: collections.Counter[bytes] = collections.Counter()
        self.workers: dict[bytes, Worker] = {}
        self.clients: dict[bytes, Client] = {}
        #: tasks any worker may run, FIFO per client, clients in turn
        self.queue: FairQueue[Task] = FairQueue()
        #: group -> tasks only that group's workers may run
        self.group_queues: dict[str, FairQueue[Task]] = {}
        self.tasks: dict[int, Task] = {}
        #: (client, client task id) -> task, for acks, cancels and dependencies
        self.by_client: dict[tuple[bytes, int], Task] = {}
        #: outcomes of recently finished tasks, for a dependent submitted while the outcome was
        #: on its way to the client
        self.recent: collections.OrderedDict[tuple[bytes, int], tuple[int, list[Any]]] = (
            collections.OrderedDict()
        )
        #: outcomes the router decided itself (refusals, lost dependencies, a worker that died
        #: mid-stream, a finished task submitted again): (client, client task id, status, frames)
        self.decided: list[tuple[bytes, int, int, list[Any]]] = []
        #: a dead worker -> the tasks charged a death for it, until its node names the culprits
        self._charged: dict[bytes, list[Task]] = {}
        #: worker -> running task ids to stop because their client is gone
        self._stop_on_worker: dict[bytes, list[int]] = {}
        self.bodies = BodyCache()
        #: fn hash -> workers waiting for its body
        self.body_waiters: dict[bytes, set[bytes]] = {}
        # Task ids start at random: a worker still running tasks from before a router restart
        # must not report them under ids this router has given to other tasks.
        self._next_id = int.from_bytes(os.urandom(6), "big") << 8
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        # What the socket loop is to send, gathered per pass: replies in arrival order, then
        # per peer (batched) cancels, tasks, stream items, results, STARTED and acks.
        self._replies: list[Send] = []
        self._results: dict[bytes, list[tuple[int, int, list[Any]]]] = collections.defaultdict(list)
        self._items: dict[bytes, list[StreamItem]] = collections.defaultdict(list)
        self._acks: dict[bytes, list[tuple[int, int]]] = collections.defaultdict(list)
        self._started: dict[bytes, list[int]] = collections.defaultdict(list)
        #: routing id -> the ZAP user id ("client:<key>" / "worker:<key>") that first used it,
        #: with authentication on; kept after the peer leaves, so nobody can claim its id
        self._owners: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._last_impostor_log = -1.0
        #: peers cut off (garbage, a revoked key, reading too slowly) -> (why, when last told):
        #: everything they send is dropped unread
        self._ignored: collections.OrderedDict[bytes, tuple[str, float]] = collections.OrderedDict()
        self._garbage: collections.Counter[bytes] = collections.Counter()
        #: peer -> when it was last told to say HELLO again
        self._told_unknown: dict[bytes, float] = {}
        self._handlers: dict[MsgType, Callable[[bytes, Any], None]] = {
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

    # -- messages in, instructions out ------------------------------------------------------

    def handle(self, peer: bytes, frames: Sequence[Any], user: str | None = None) -> None:
        """Take one message from ``peer`` (its frames after the routing id); what to send
        because of it goes to the outbox (:meth:`take_sends`).

        ``user``: the ZAP user id of the key it came under, with authentication on. A
        malformed message is answered (BAD_MESSAGE) and counted, never raised: one peer's
        garbage must not take the router down with every task in it.
        """
        if peer in self._ignored:
            self._remind_cut_off(peer)
            return
        try:
            if user is not None and not self._owned_by_sender(peer, user):
                return
            type_, body = protocol.parse_header(frames)
            handler = self._handlers.get(type_)
            if handler is None:
                raise ProtocolError(f"{type_.name} is not a message for the router")
            if type_ is MsgType.HELLO and not protocol.is_peer_id(peer):
                self._refuse(
                    peer,
                    "connect with a routing id of 16 random bytes (squall.protocol."
                    "new_peer_id); libzmq's own ids can be predicted and claimed",
                )
                return
            if user is not None and not self._allowed(peer, user, type_, body):
                return
            self.seen(peer)
            handler(peer, _DECODERS[type_](body, frames[1:]))
        except VersionMismatch as exc:
            self.counters["protocol_errors"] += 1
            self._log(
                "warning",
                "peer speaks another protocol version",
                peer=peer.hex(),
                version=exc.version,
            )
            self._replies.append(SendError(peer, ErrorCode.VERSION, str(exc)))
        except ProtocolError as exc:
            self.counters["protocol_errors"] += 1
            self._garbage[peer] += 1
            if self._garbage[peer] > GARBAGE_LIMIT:
                self.cut_off(peer, f"more than {GARBAGE_LIMIT} malformed messages")
                return
            self._log(
                "warning",
                "malformed message dropped",
                peer=peer.hex(),
                error=str(exc),
                frames=len(frames),
                head=bytes(memoryview(frames[0])[:32]).hex() if frames else "",
            )
            self._replies.append(SendError(peer, ErrorCode.BAD_MESSAGE, str(exc)))
        except Exception as exc:  # a bug must not take the router down with every task in it
            self.counters["internal_errors"] += 1
            self._log("error", "error handling message", peer=peer.hex(), exc_info=exc)

    def tick(self, now: float | None = None) -> None:
        """A heartbeat interval passed: beat to every peer, declare the silent ones gone."""
        self._replies.append(SendHeartbeats([*self.workers, *self.clients]))
        for peer in self.expired_workers(now):
            requeued = self.remove_worker(peer)
            self._log(
                "warning",
                "worker silent past liveness window; declared dead",
                liveness=self.liveness,
                requeued=len(requeued),
            )
        for peer in self.expired_clients(now):
            dropped = self.remove_client(peer)
            self._log("warning", "client silent; its queued tasks are dropped", dropped=dropped)

    def take_sends(self) -> list[Send]:
        """Decide what goes to workers now (:meth:`dispatch`) and hand over everything to send,
        in order: replies as they were made, then per peer CANCELs before TASKs (a worker
        frees a slot before it is given another), stream ITEMs before RESULTs (a stream's last
        item never overtakes its end), STARTED, ACKs."""
        sends, self._replies = self._replies, []
        for peer, task_ids in self.take_stops().items():
            sends.append(SendCancel(peer, task_ids))
        started = self._started
        for worker, tasks in self.dispatch():
            for task in tasks:
                started[task.client].append(task.client_task_id)
            sends.append(SendTasks(worker.peer, tasks))
        if self._items:
            items, self._items = self._items, collections.defaultdict(list)
            sends.extend(SendItems(peer, entries) for peer, entries in items.items())
        results = self._results
        for client, client_task_id, status, frames in self.take_decided():
            results[client].append((client_task_id, status, frames))
        if results:
            self._results = collections.defaultdict(list)
            sends.extend(SendResults(peer, outcomes) for peer, outcomes in results.items())
        if started:
            self._started = collections.defaultdict(list)
            sends.extend(SendStarted(peer, ids) for peer, ids in started.items())
        if self._acks:
            acks, self._acks = self._acks, collections.defaultdict(list)
            sends.extend(SendAcks(peer, counts) for peer, counts in acks.items())
        return sends

    def cut_off(self, peer: bytes, reason: str) -> None:
        """Stop serving a peer (garbage, a revoked key, too slow a reader): its state goes, its
        messages are dropped unread from now on (a ROUTER cannot hang up on one peer), and it
        is told why, so that a client fails its futures instead of hanging."""
        self._ignored[peer] = (reason, self.clock())
        if len(self._ignored) > MAX_IGNORED:
            self._ignored.popitem(last=False)
        self.counters["peers_cut_off"] += 1
        self.forget_peer(peer)
        self._log("warning", "peer cut off", peer=peer.hex(), reason=reason)
        self._replies.append(CutOff(peer, reason))

    def is_cut_off(self, peer: bytes) -> bool:
        return peer in self._ignored

    def forget_peer(self, peer: bytes) -> None:
        if peer in self.workers:
            self.remove_worker(peer)
        elif peer in self.clients:
            self.remove_client(peer)

    def peer_unreachable(self, peer: bytes) -> None:
        """A send found ``peer`` gone (ROUTER_MANDATORY): a worker's tasks run elsewhere."""
        if peer in self.workers:
            requeued = self.remove_worker(peer)
            self._log("warning", "worker unreachable", requeued=len(requeued))
        elif peer in self.clients:
            self.remove_client(peer)
            self._log("warning", "client unreachable; its results are dropped")

    def keys_reloaded(self) -> None:
        """The keys were read again: cut off the peers whose key is no longer listed."""
        if self.authority is None:
            return
        for peer in [*self.workers, *self.clients]:
            user = self._owners.get(peer)
            if user is not None and self.authority.role_of(user) is None:
                self.cut_off(peer, "your key was revoked")

    def _log(self, level: str, event: str, **fields: Any) -> None:
        self._replies.append(Log(level, event, fields))

    def _refuse(self, peer: bytes, reason: str) -> None:
        self.counters["refused"] += 1
        self._replies.append(SendError(peer, ErrorCode.REFUSED, reason))

    def _remind_cut_off(self, peer: bytes) -> None:
        reason, told = self._ignored[peer]
        now = self.clock()
        if now - told >= CUT_OFF_REMINDER:
            self._ignored[peer] = (reason, now)
            self._replies.append(CutOff(peer, reason))

    def _tell_unknown(self, peer: bytes) -> None:
        """Ask a peer we do not know (we restarted, or declared it dead) to say HELLO again."""
        now = self.clock()
        if now - self._told_unknown.get(peer, -UNKNOWN_PEER_REMINDER) < UNKNOWN_PEER_REMINDER:
            return
        self._told_unknown[peer] = now
        if len(self._told_unknown) > MAX_OWNERS:
            self._told_unknown.clear()
        self._replies.append(SendError(peer, ErrorCode.UNKNOWN_PEER, "say HELLO again"))

    # -- authentication ---------------------------------------------------------------------

    def _owned_by_sender(self, peer: bytes, user: str) -> bool:
        """Whether the key that sent this message is the one that first used its routing id.

        libzmq lets a new connection take over an id whose connection went away; bound to its
        first key, an id taken over by another key gets nothing through, and the session of
        the id's owner is ended here (its messages would now reach the impostor).
        """
        owner = self._owners.get(peer)
        if owner is None:
            self._owners[peer] = user
            if len(self._owners) > MAX_OWNERS:
                self._owners.popitem(last=False)
            return True
        self._owners.move_to_end(peer)
        if owner == user:
            return True
        self.counters["impostors"] += 1
        self.forget_peer(peer)
        now = self.clock()
        if now - self._last_impostor_log > 1.0:
            self._last_impostor_log = now
            self._log(
                "warning",
                "message dropped: its routing id belongs to another key",
                peer=peer.hex(),
                key=user,
                owner=owner,
            )
        return False

    def _allowed(self, peer: bytes, user: str, type_: MsgType, body: bytes) -> bool:
        """Whether the sender's key (its role) may send this message; refuse it if not.

        A client key cannot register as a worker nor report results; a worker key cannot
        submit. A key revoked since it connected is cut off.
        """
        assert self.authority is not None
        role = self.authority.role_of(self._owners.get(peer, user))
        if role is None:  # revoked since it connected
            self.cut_off(peer, "your key was revoked")
            return False
        if type_ is MsgType.HELLO:
            allowed = (protocol.decode_hello(body).role is Role.WORKER) == (role == WORKER)
        elif type_ in _WORKER_ONLY:
            allowed = role == WORKER
        elif type_ in _CLIENT_ONLY:
            allowed = role == CLIENT
        else:
            allowed = True
        if not allowed:
            self._refuse(peer, f"{type_.name} is not allowed for your key")
        return allowed

    def _same_key(self, peer: bytes, other: bytes) -> bool:
        """Whether two routing ids came under one key (always, without authentication): a
        watchdog or a node speaks only for a worker of its own key."""
        return self.authority is None or self._owners.get(peer) == self._owners.get(other)

    # -- handlers: one per message type, each taking the decoded message ---------------------

    def _on_hello(self, peer: bytes, hello: protocol.Hello) -> None:
        owner = self._owners.get(peer) if self.authority is not None else None
        self._told_unknown.pop(peer, None)
        if hello.role is Role.WORKER:
            known = self.workers.get(peer)
            resumed = known is not None and known.pid == hello.pid
            # A worker's group is its key's folder, never what it says of itself.
            group = self.authority.group_of(owner) if self.authority is not None and owner else ""
            self.add_worker(peer, hello.pid, hello.capacity, group)
            self._log(
                "info",
                "worker joined",
                worker_pid=hello.pid,
                capacity=hello.capacity,
                group=group or None,
                workers=len(self.workers),
            )
        else:
            refusal = self._group_refusal(hello.group)
            if refusal is not None:
                self._refuse(peer, refusal)
                return
            resumed = peer in self.clients
            self.add_client(peer, hello.pid, owner, hello.group)
            self._log(
                "info", "client joined", client_pid=hello.pid, worker_group=hello.group or None
            )
        self._replies.append(SendWelcome(peer, len(self.workers), resumed))

    def _group_refusal(self, group: str) -> str | None:
        """Why a client cannot be restricted to ``group``; None if it can (or asks for none)."""
        if not group:
            return None
        if self.authority is None:
            return (
                "worker groups need a router with --auth: without keys, nothing says who is in one"
            )
        if not self.authority.has_group(group):
            return f"no worker group {group!r}: the router's auth directory has no workers/{group}/"
        return None

    def _on_submit(self, peer: bytes, items: list[SubmitItem]) -> None:
        if peer in self.workers:
            raise ProtocolError("a worker cannot submit tasks")
        if peer not in self.clients:
            # We restarted (or forgot it): it keeps every payload until the outcome arrives,
            # and submits all its unfinished tasks again once it has said HELLO.
            self._tell_unknown(peer)
            return
        self.submit(peer, items)

    def _on_result(self, peer: bytes, items: list[protocol.ResultItem]) -> None:
        if peer not in self.workers:
            self._tell_unknown(peer)
            self.counters["stale_results"] += len(items)
            return
        results = self._results
        for item in items:
            task = self.complete(peer, item.task_id, item.status, item.frames)
            if task is not None:
                results[task.client].append((task.client_task_id, item.status, item.frames))
                if item.status == Status.ERROR:
                    self._replies.append(TaskFailed(task.id, task.fn_hash, item.frames))

    def _on_items(self, peer: bytes, items: list[StreamItem]) -> None:
        for item in items:
            task = self.stream_item(peer, item.task_id, item.n_values)
            if task is not None:
                self._items[task.client].append(item._replace(task_id=task.client_task_id))

    def _on_ack(self, peer: bytes, acks: list[tuple[int, int]]) -> None:
        for client_task_id, consumed in acks:
            task = self.running_task(peer, client_task_id)
            if task is not None and task.worker is not None:
                self._acks[task.worker].append((task.id, consumed))

    def _on_cancel(self, peer: bytes, client_task_ids: list[int]) -> None:
        for worker, task_ids in self.cancel(peer, client_task_ids).items():
            self._stop_on_worker.setdefault(worker, []).extend(task_ids)

    def _on_fn_body(self, peer: bytes, message: tuple[bytes, Any]) -> None:
        fn_hash, fn_body = message
        limit = self.limits.body_size
        if len(fn_body) > limit:  # refused before it is copied or hashed
            reason = (
                f"the function's body is {len(fn_body)} bytes, over the router's limit of "
                f"{limit} (--max-body-size): pass big data as arguments, not in closures"
            )
            self.refuse_body(peer, fn_hash, reason)
            self._replies.append(SendError(peer, ErrorCode.REFUSED, reason))
            return
        fn_bytes = bytes(memoryview(fn_body))
        waiting, good = self.body_arrived(fn_hash, fn_bytes, peer)
        for worker in waiting:
            self._replies.append(SendBody(worker, fn_hash, fn_bytes if good else b""))

    def _on_fn_fetch(self, peer: bytes, fn_hash: bytes) -> None:
        fn_body, ask = self.body_for(peer, fn_hash)
        if fn_body is not None:
            self._replies.append(SendBody(peer, fn_hash, fn_body))
        elif ask is not None:
            self._replies.append(SendFetch(ask, fn_hash))
        else:
            self._log("warning", "function body unavailable", fn_hash=fn_hash.hex())
            self._replies.append(SendBody(peer, fn_hash, b""))

    def _on_credit(self, peer: bytes, capacity: int) -> None:
        self.set_capacity(peer, capacity)

    def _on_heartbeat(self, peer: bytes, beat: protocol.Heartbeat) -> None:
        on_behalf_of = beat.on_behalf_of
        if not on_behalf_of:
            if peer not in self.workers and peer not in self.clients:
                self._tell_unknown(peer)
            return
        # A worker's watchdog thread: its hub may be busy with a long task. It speaks only
        # for a worker holding its own key.
        if not self._same_key(on_behalf_of, peer):
            return
        self.seen(on_behalf_of)
        taken = self.hub_report(on_behalf_of, beat.blocked_ms, beat.last_task)
        if taken:  # sent while the hub was blocked, still unread: they run elsewhere
            self._stop_on_worker.setdefault(on_behalf_of, []).extend(taken)
            self._log(
                "warning",
                "worker hub blocked; its unread tasks go elsewhere",
                blocked_s=beat.blocked_ms / 1000,
                taken_back=len(taken),
            )

    def _on_timeout(self, peer: bytes, message: tuple[bytes, str, list[int]]) -> None:
        worker, limit, task_ids = message
        if not self._same_key(worker, peer) or worker not in self.workers:
            return
        self.timed_out(worker, task_ids, limit)
        self._log(
            "warning",
            "tasks blocked a worker past their hard time limit; it restarts",
            tasks=len(task_ids),
            limit=limit,
        )

    def _on_crashed(self, peer: bytes, message: tuple[bytes, list[int]]) -> None:
        """A node says its worker process died on a signal while running ``culprits``."""
        worker, culprits = message
        if not self._same_key(worker, peer):
            return  # a node speaks only for a worker of its own key
        known = worker in self.workers
        affected = self.worker_crashed(worker, culprits)
        self._log(
            "warning",
            "worker process crashed",
            culprits=culprits or None,
            requeued=len(affected) if known else None,
            refunded=None if known else len(affected),
        )

    def _on_withdraw(self, peer: bytes, requests: list[tuple[int, bool]]) -> None:
        """Drop tasks only if they have not started, and say which were dropped."""
        answers = self.withdraw(peer, [task_id for task_id, _ in requests])
        self._replies.append(SendWithdrawn(peer, answers))

    def _on_disconnect(self, peer: bytes, _: None) -> None:
        if peer in self.workers:
            requeued = self.remove_worker(peer, died=False)
            self._log("info", "worker left", handed_back=len(requeued), workers=len(self.workers))
        elif peer in self.clients:
            dropped = self.remove_client(peer)
            self._log("info", "client left", dropped_queued=dropped)

    def _on_stats(self, peer: bytes, _: None) -> None:
        stats = self.stats()
        if self.authority is not None:
            # Keys may only run or submit tasks: which processes run where, and how many
            # clients there are, is no business of theirs.
            for private in ("worker_pids", "clients"):
                stats.pop(private, None)
        self._replies.append(SendStats(peer, stats))

    # -- peers ------------------------------------------------------------------------------

    def add_client(self, peer: bytes, pid: int, scope: str | None = None, group: str = "") -> None:
        """Register a client. ``scope``: who it uploads bodies as (its key's user id with
        authentication); by default the peer itself, so no two clients share bodies.
        ``group``: only workers of that group run its tasks."""
        self.clients[peer] = Client(peer, pid, self.clock(), scope or _peer_scope(peer), group)

    def add_worker(self, peer: bytes, pid: int, capacity: int, group: str = "") -> None:
        """Register a worker; a known one saying HELLO again keeps what it runs (it only
        thought we had forgotten it) and updates its capacity."""
        capacity = min(capacity, self.limits.max_capacity)
        known = self.workers.get(peer)
        if known is not None and known.pid == pid:
            known.capacity = capacity
            known.last_seen = self.clock()
            return
        if known is not None:  # same address, new process: the old one died
            self.remove_worker(peer, died=True)
        self.workers[peer] = Worker(peer, pid, capacity, self.clock(), group=group)

    def set_capacity(self, peer: bytes, capacity: int) -> None:
        worker = self.workers.get(peer)
        if worker is not None:
            worker.capacity = min(max(0, capacity), self.limits.max_capacity)

    def seen(self, peer: bytes) -> None:
        """Any message from a peer is a sign of life."""
        now = self.clock()
        worker = self.workers.get(peer)
        if worker is not None:
            worker.last_seen = now
            worker.blocked = False  # (the watchdog's report of a blocked hub comes after this)
            return
        client = self.clients.get(peer)
        if client is not None:
            client.last_seen = now

    def remove_worker(
        self, peer: bytes, died: bool = True, culprits: Iterable[int] = ()
    ) -> list[Task]:
        """Forget a worker; its running tasks go back to the front of the queue.

        ``died``: the worker vanished (silence, crash) rather than handing its tasks back in a
        graceful drain. Each task it held then counts one death, or only the ``culprits`` when
        its node could tell which tasks were running as it crashed; at ``max_worker_deaths`` a
        task fails with WorkerLost, and from ISOLATE_AFTER on it runs alone. Returns the tasks
        that will run again.
        """
        worker = self.workers.pop(peer, None)
        if worker is None:
            return []
        blamed = set(culprits)
        if died:
            self.counters["worker_deaths"] += 1
            if not blamed:  # remembered, in case its node names the culprits a moment later
                self._charged[peer] = list(worker.running.values())
                while len(self._charged) > 64:
                    del self._charged[next(iter(self._charged))]
        requeued, isolated = [], []
        for task in worker.running.values():
            task.worker = None
            if died and (not blamed or task.id in blamed):
                task.deaths += 1
            if task.cancelled:
                self._settle(task, Status.CANCELLED, [])  # its dependents learn it will not run
            elif task.client not in self.clients:
                self._forget(task)  # nobody is waiting for it: do not run it again
            elif task.items_sent:
                # Running it again would repeat items the reader already has.
                self._fail(
                    task,
                    FailureCode.WORKER_LOST,
                    f"the worker died after the stream yielded {task.items_sent} items",
                )
            elif task.deaths >= self.max_worker_deaths:
                self.counters["worker_lost"] += 1
                self._fail(
                    task,
                    FailureCode.WORKER_LOST,
                    f"the worker running this task died {task.deaths} times "
                    f"(attempts 1 to {task.attempt + 1}); not trying again",
                )
            elif task.deaths >= ISOLATE_AFTER:
                isolated.append(task)
            else:
                requeued.append(task)
        for task in reversed(requeued):
            task.attempt += 1
            self._queue_of(task).appendleft(task)
        for task in isolated:
            task.attempt += 1
            task.suspect = True
            self.suspects.append(task)
        for task in requeued + isolated:
            self.queued_by_client[task.client] += 1
        self.counters["redelivered"] += len(requeued) + len(isolated)
        for waiting in self.body_waiters.values():
            waiting.discard(peer)
        return requeued + isolated

    def timed_out(self, worker_peer: bytes, task_ids: Iterable[int], limit: str) -> None:
        """A worker reports tasks that blocked its hub past their time limit; it restarts.

        Those tasks fail with TaskTimeout; the worker's other tasks are handed back without
        counting a death against them: they did nothing wrong.
        """
        worker = self.workers.get(worker_peer)
        if worker is None:
            return
        for task_id in task_ids:
            task = worker.running.pop(task_id, None)
            if task is not None:
                self.counters["timed_out"] += 1
                self._fail(
                    task,
                    FailureCode.TASK_TIMEOUT,
                    f"the task blocked its worker past {limit}; the worker process was restarted",
                )
        self.remove_worker(worker_peer, died=False)

    def remove_client(self, peer: bytes) -> int:
        """Forget a client and drop its queued tasks; return how many were dropped.

        Its running tasks are marked cancelled; :meth:`take_stops` tells the server
        which workers must stop them (a paused stream would otherwise hold its slot forever).
        """
        for worker in self.workers.values():
            for task in worker.running.values():
                if task.client == peer and not task.cancelled:
                    task.cancelled = True
                    self._stop_on_worker.setdefault(worker.peer, []).append(task.id)
        self.clients.pop(peer, None)
        dropped = self.queue.drop_client(peer)
        for group, queue in list(self.group_queues.items()):
            dropped += queue.drop_client(peer)
            if not queue:
                del self.group_queues[group]
        self.suspects = collections.deque(t for t in self.suspects if t.client != peer)
        self.queued_by_client.pop(peer, None)
        for task in [t for t in self.tasks.values() if t.client == peer and t.worker is None]:
            self._forget(task)  # queued, or waiting for dependencies
        for key in [k for k in self.recent if k[0] == peer]:
            self.recent_bytes -= frames_size(self.recent.pop(key)[1])
        self.uploaded.pop(_peer_scope(peer), None)
        return dropped

    def worker_crashed(self, peer: bytes, culprits: list[int]) -> list[Task]:
        """A worker's node says it died on a fatal signal running ``culprits``: only they are
        charged a death, the rest of its tasks run again as if it had drained. If the router
        had already declared it dead (charging everyone), the others' deaths are refunded."""
        if peer in self.workers:
            return self.remove_worker(peer, died=True, culprits=culprits)
        charged = self._charged.pop(peer, None)
        if not charged or not culprits:
            return []
        refunded = []
        for task in charged:
            if task.id in culprits or task.id not in self.tasks or task.deaths == 0:
                continue
            task.deaths -= 1
            refunded.append(task)
            if task.deaths < ISOLATE_AFTER and task.worker is None and task.suspect:
                self.suspects.remove(task)  # no longer a suspect: back to the normal queue
                task.suspect = False
                self._queue_of(task).appendleft(task)
        self.counters["deaths_refunded"] += len(refunded)
        return refunded

    def forgive_silence(self) -> None:
        """The router itself did not run for a while (paused, swapped out): its peers' silence
        is its own, so every peer gets a fresh lease instead of being declared dead."""
        now = self.clock()
        for worker in self.workers.values():
            worker.last_seen = now
        for client in self.clients.values():
            client.last_seen = now

    def hub_report(self, worker_peer: bytes, blocked_ms: int, last_task: int) -> list[int]:
        """A worker's watchdog says its hub has been blocked ``blocked_ms`` and has received
        tasks up to id ``last_task``.

        Past ``blocked_after`` the worker gets no new tasks, and the tasks sent to it after
        ``last_task`` (still unread in its socket) go back to the queue, with no attempt or
        death counted. Returns their ids: the worker must be told to drop them unstarted.
        """
        worker = self.workers.get(worker_peer)
        if worker is None:
            return []
        worker.blocked = blocked_ms >= self.blocked_after * 1000
        if not worker.blocked:
            return []
        unread = sorted(
            (t for task_id, t in worker.running.items() if task_id > last_task),
            key=lambda t: t.id,
        )
        for task in reversed(unread):
            del worker.running[task.id]
            task.worker = None
            self.queued_by_client[task.client] += 1
            if worker.isolating == task.id:
                worker.isolating = None
                task.suspect = True
                self.suspects.appendleft(task)
            else:
                self._queue_of(task).appendleft(task)
        self.counters["taken_back"] += len(unread)
        return [t.id for t in unread]

    def withdraw(self, client: bytes, client_task_ids: Iterable[int]) -> list[tuple[int, bool]]:
        """Drop each task only if no worker has it yet; say, per task, whether it was dropped.

        True means it never ran and never will, which is what ``Future.cancel()`` promises.
        """
        answers = []
        for client_task_id in client_task_ids:
            task = self.by_client.get((client, client_task_id))
            if task is None or task.cancelled or task.worker is not None:
                answers.append((client_task_id, False))
                continue
            self.cancel(client, (client_task_id,))
            answers.append((client_task_id, True))
        return answers

    def expired_workers(self, now: float | None = None) -> list[bytes]:
        """Workers silent for longer than the liveness window."""
        deadline = (self.clock() if now is None else now) - self.liveness
        return [peer for peer, w in self.workers.items() if w.last_seen < deadline]

    def expired_clients(self, now: float | None = None) -> list[bytes]:
        """Clients silent for CLIENT_LIVENESS windows: gone (killed, or cut off) for good.

        A client's I/O thread competes for the GIL with the application, so it gets a longer
        window than a worker before its queued tasks are dropped.
        """
        deadline = (self.clock() if now is None else now) - CLIENT_LIVENESS * self.liveness
        return [peer for peer, c in self.clients.items() if c.last_seen < deadline]

    # -- tasks ------------------------------------------------------------------------------

    def submit(self, client: bytes, items: Iterable[SubmitItem]) -> int:
        """Queue tasks from ``client`` (FIFO); return how many.

        A task is refused (failed at once, with the reason) when its client's queue or the
        router's byte limits are full, when it names a function body its client did not
        upload, or when it depends on itself or on a task submitted after it.
        """
        n = 0
        known = self.clients.get(client)
        uploads = self.uploaded.get(known.scope) if known is not None else None
        for item in items:
            key = (client, item.task_id)
            if key in self.by_client:
                self.counters["duplicate_submits"] += 1  # resent after a false alarm: known
                continue
            if key in self.recent:  # finished already: its outcome again, not a second run
                self.counters["duplicate_submits"] += 1
                status, frames = self.recent[key]
                self.decided.append((client, item.task_id, status, frames))
                continue
            size = frames_size(item.frames)
            refusal = self._refusal(client, item, size, uploads)
            if refusal is not None:
                outcome = failure_outcome(*refusal)
                self.decided.append((client, item.task_id, Status.ERROR, outcome))
                continue
            self.queued_by_client[client] += 1
            self.bytes_by_client[client] += size
            self.held_bytes += size
            self._next_id += 1
            task = Task(
                self._next_id,
                client,
                item.task_id,
                item.fn_hash,
                item.kind,
                item.frames,
                window=item.window,
                size=size,
                group=known.group if known is not None else "",
            )
            self.tasks[task.id] = task
            self.by_client[(client, item.task_id)] = task
            if item.deps:
                self._wire_dependencies(task, item.deps)
            if task.waiting == 0:
                self._queue_of(task).append(task)
            n += 1
        self.counters["submitted"] += n
        return n

    def _refusal(
        self,
        client: bytes,
        item: SubmitItem,
        size: int,
        uploads: collections.OrderedDict[bytes, None] | None,
    ) -> tuple[FailureCode, str] | None:
        """Why the router will not take ``item`` (the code the caller's error gets, and the
        message); None when it will."""
        limits = self.limits
        if self.queued_by_client[client] >= self.max_queued:
            self.counters["refused_full"] += 1
            return FailureCode.QUEUE_FULL, (
                f"the router's queue for this client is full ({self.max_queued} tasks); "
                "submit more slowly"
            )
        if size > limits.client_bytes:
            self.counters["refused_bytes"] += 1
            return FailureCode.TASK_TOO_LARGE, (
                f"the task's arguments are {size} bytes, more than the router takes from one "
                f"client ({limits.client_bytes}, --max-client-bytes): pass big data another way"
            )
        if self.bytes_by_client[client] + size > limits.client_bytes:
            self.counters["refused_bytes"] += 1
            return FailureCode.QUEUE_FULL, (
                f"the router holds {self.bytes_by_client[client]} bytes of this client's "
                f"arguments; {size} more would pass its limit of {limits.client_bytes} "
                "(--max-client-bytes): submit more slowly or pass big data another way"
            )
        if self.held_bytes + size > limits.held_bytes:
            self.counters["refused_bytes"] += 1
            return FailureCode.QUEUE_FULL, (
                f"the router holds {self.held_bytes} bytes of arguments; {size} more would "
                f"pass its limit of {limits.held_bytes} (--max-held-bytes)"
            )
        if uploads is None or item.fn_hash not in uploads:
            self.counters["unknown_bodies"] += 1
            scope = self.clients[client].scope if client in self.clients else ""
            reason = self.refused_bodies.get((scope, item.fn_hash))
            return FailureCode.UNKNOWN_FUNCTION, reason or (
                f"function {item.fn_hash.hex()} was never uploaded by this client: each "
                "client sends the bodies of the functions it submits"
            )
        if any(dep >= item.task_id for dep in item.deps):
            self.counters["refused_dependencies"] += 1
            return FailureCode.UNKNOWN_DEPENDENCY, (
                "a task can only depend on tasks submitted before it (not on itself)"
            )
        return None

    def _wire_dependencies(self, task: Task, deps: tuple[int, ...]) -> None:
        """Hold ``task`` until the tasks it takes as arguments have outcomes.

        The outcome frames never go back to the client and out again: they are handed to the
        dependent task as they came from the worker.
        """
        task.deps = [None] * len(deps)
        for index, dep_id in enumerate(deps):
            key = (task.client, dep_id)
            dep = self.by_client.get(key)
            if dep is not None:
                if dep.dependents is None:
                    dep.dependents = []
                dep.dependents.append((task, index))
                task.waiting += 1
            elif key in self.recent:
                task.deps[index] = self.recent[key]
            else:
                task.deps[index] = (
                    Status.ERROR,
                    failure_outcome(
                        FailureCode.UNKNOWN_DEPENDENCY,
                        f"dependency task {dep_id} is unknown to the router (finished long ago, or "
                        "never submitted): pass its value instead",
                    ),
                )

    def dispatch(self) -> list[tuple[Worker, list[Task]]]:
        """Decide which queued tasks go to which worker now.

        Only workers with free capacity get tasks. When there are fewer tasks than free slots,
        each worker gets a share in proportion to its free capacity (largest first), so load
        spreads across processes instead of piling onto the first one.
        """
        plan: list[tuple[Worker, list[Task]]] = []
        if self.suspects:
            self._dispatch_suspects(plan)
        for group, queue in list(self.group_queues.items()):
            # A group's tasks first: they can run nowhere else.
            self._spread(queue, [w for w in self.workers.values() if w.group == group], plan)
            if not queue:
                del self.group_queues[group]
        if self.queue:
            self._spread(self.queue, self.workers.values(), plan)
        return plan

    def _dispatch_suspects(self, plan: list[tuple[Worker, list[Task]]]) -> None:
        """Each suspect runs alone on an idle worker (of its group), in FIFO order."""
        waiting: collections.deque[Task] = collections.deque()
        while self.suspects:
            task = self.suspects.popleft()
            if task.cancelled:  # cancelled while it waited: dropped here, not searched for
                task.suspect = False
                continue
            idle = next(
                (
                    w
                    for w in self.workers.values()
                    if not w.running
                    and w.capacity > 0
                    and w.isolating is None
                    and not w.blocked
                    and (not task.group or w.group == task.group)
                ),
                None,
            )
            if idle is None:
                waiting.append(task)
                continue
            task.suspect = False
            self._assign(idle, [task])
            idle.isolating = task.id
            plan.append((idle, [task]))
        self.suspects = waiting

    def _spread(
        self,
        queue: FairQueue[Task],
        workers: Iterable[Worker],
        plan: list[tuple[Worker, list[Task]]],
    ) -> None:
        """Hand queued tasks to ``workers`` with free slots, in proportion to their room."""
        ready = sorted((w for w in workers if w.free > 0), key=lambda w: -w.free)
        total_free = sum(w.free for w in ready)
        n = min(len(queue), total_free)
        left = n
        for worker in ready:
            if left == 0:
                break
            share = worker.free if n == total_free else -(-n * worker.free // total_free)
            share = min(share, left)
            batch = [queue.popleft() for _ in range(share)]
            self._assign(worker, batch)
            left -= share
            plan.append((worker, batch))

    def _queue_of(self, task: Task) -> FairQueue[Task]:
        if not task.group:
            return self.queue
        queue = self.group_queues.get(task.group)
        if queue is None:
            queue = self.group_queues[task.group] = FairQueue()
        return queue

    def _assign(self, worker: Worker, tasks: list[Task]) -> None:
        for task in tasks:
            task.worker = worker.peer
            worker.running[task.id] = task
            self.queued_by_client[task.client] -= 1
        self.counters["dispatched"] += len(tasks)

    def complete(
        self,
        worker_peer: bytes,
        task_id: int,
        status: int = Status.OK,
        frames: list[Any] | None = None,
    ) -> Task | None:
        """A worker reports an outcome; return the task if the outcome should reach its client.

        None means the outcome is stale (the task was taken away from this worker, e.g. after
        it was declared dead), cancelled, or its client is gone: it is dropped so each task
        resolves once.
        """
        worker = self.workers.get(worker_peer)
        task = worker.running.pop(task_id, None) if worker is not None else None
        if task is None:
            self.counters["stale_results"] += 1
            return None
        if worker is not None and worker.isolating == task_id:
            worker.isolating = None
        self.counters["completed"] += 1
        self.counters[_OUTCOME_COUNTERS.get(status, "failed")] += 1
        self._settle(task, status, frames or [])
        if task.client not in self.clients or task.cancelled or status == Status.CANCELLED:
            return None
        return task

    def _settle(self, task: Task, status: int, frames: list[Any]) -> None:
        """Forget a finished task; hand its outcome to the tasks waiting for it.

        On the path of every outcome and every cancel: kept to a few dict operations.
        """
        self._forget(task)
        recent = self.recent
        recent[(task.client, task.client_task_id)] = (status, frames)
        if frames:
            self.recent_bytes += frames_size(frames)
        limits = self.limits
        if len(recent) > limits.recent_count or self.recent_bytes > limits.recent_bytes:
            while recent and (
                len(recent) > limits.recent_count or self.recent_bytes > limits.recent_bytes
            ):
                _, (_, old) = recent.popitem(last=False)
                if old:
                    self.recent_bytes -= frames_size(old)
        if task.dependents:
            for dependent, index in task.dependents:
                assert dependent.deps is not None
                dependent.deps[index] = (status, frames)
                dependent.waiting -= 1
                if dependent.waiting == 0 and not dependent.cancelled:
                    self._queue_of(dependent).append(dependent)

    def _forget(self, task: Task) -> None:
        client = task.client
        if self.tasks.pop(task.id, None) is not None:
            held = self.bytes_by_client
            left = held[client] - task.size
            if left > 0:
                held[client] = left
            else:
                held.pop(client, None)
            self.held_bytes -= task.size
        self.by_client.pop((client, task.client_task_id), None)

    def _fail(self, task: Task, code: FailureCode, message: str) -> None:
        """Fail a task with a squall error the router makes itself (no pickle involved)."""
        frames = failure_outcome(code, message)
        self._settle(task, Status.ERROR, frames)
        if task.client in self.clients and not task.cancelled:
            self.decided.append((task.client, task.client_task_id, Status.ERROR, frames))

    def take_stops(self) -> dict[bytes, list[int]]:
        """Running tasks to stop, per live worker (cancelled, of departed clients, taken back
        from a blocked hub); :meth:`take_sends` turns them into CANCELs."""
        stops, self._stop_on_worker = self._stop_on_worker, {}
        return {w: ids for w, ids in stops.items() if w in self.workers}

    def take_decided(self) -> list[tuple[bytes, int, int, list[Any]]]:
        """Outcomes the router made itself; :meth:`take_sends` adds them to the RESULTs."""
        decided, self.decided = self.decided, []
        return decided

    # -- streams and cancellation -----------------------------------------------------------

    def stream_item(self, worker_peer: bytes, task_id: int, count: int = 1) -> Task | None:
        """A running stream yielded ``count`` values: return its task if they should reach the
        client."""
        worker = self.workers.get(worker_peer)
        task = worker.running.get(task_id) if worker is not None else None
        if task is None or task.cancelled or task.client not in self.clients:
            return None
        task.items_sent += count
        return task

    def running_task(self, client: bytes, client_task_id: int) -> Task | None:
        """The task a client means, if it is running on a worker now (for acks)."""
        task = self.by_client.get((client, client_task_id))
        return task if task is not None and task.worker is not None else None

    def cancel(self, client: bytes, client_task_ids: Iterable[int]) -> dict[bytes, list[int]]:
        """Cancel tasks: queued or held ones are dropped here; return, per worker, the ids of
        running ones it must stop. Their outcomes, when they come, reach no one."""
        stop: dict[bytes, list[int]] = {}
        for client_task_id in client_task_ids:
            task = self.by_client.get((client, client_task_id))
            if task is None or task.cancelled:
                continue
            task.cancelled = True
            self.counters["cancelled"] += 1
            if task.worker is not None:
                stop.setdefault(task.worker, []).append(task.id)
            else:
                # Marked, not searched for: a queued task (or suspect) is skipped when its
                # turn comes, so each cancel is O(1) however long the queue.
                if task.waiting == 0 and not task.suspect:
                    self._queue_of(task).drop(task)
                task.frames = []  # its arguments are freed now, not when its turn comes
                self.queued_by_client[client] -= 1
                self._settle(task, Status.CANCELLED, [])  # its dependents learn it will not run
        return stop

    # -- function bodies --------------------------------------------------------------------

    def body_for(self, worker_peer: bytes, fn_hash: bytes) -> tuple[bytes | None, bytes | None]:
        """A worker misses a function body: return ``(body, None)`` when the cache has it,
        else ``(None, client)`` naming a client to ask (``(None, None)`` if none can answer).
        """
        body = self.bodies.get(fn_hash)
        if body is not None:
            self.counters["bodies_sent"] += 1
            return body, None
        worker = self.workers.get(worker_peer)
        owner = None
        if worker is not None:
            owner = next((t.client for t in worker.running.values() if t.fn_hash == fn_hash), None)
        if owner is None or owner not in self.clients:
            return None, None
        self.body_waiters.setdefault(fn_hash, set()).add(worker_peer)
        return None, owner

    def body_arrived(
        self, fn_hash: bytes, body: bytes, client: bytes | None = None
    ) -> tuple[list[bytes], bool]:
        """A client sent a body: cache it and note that its scope uploaded it.

        Returns the workers waiting for it and whether it was good. A bad body (empty, or not
        hashing to ``fn_hash``) still goes back to the waiting workers as empty, so that they
        fail its tasks instead of waiting for it forever.
        """
        waiting = [w for w in self.body_waiters.pop(fn_hash, ()) if w in self.workers]
        if not self.bodies.put(fn_hash, body):
            self.counters["bad_bodies"] += 1
            return waiting, False
        self.counters["bodies_received"] += 1
        if client is not None:
            self.note_upload(client, fn_hash)
        self.counters["bodies_sent"] += len(waiting)
        return waiting, True

    def note_upload(self, client: bytes, fn_hash: bytes) -> None:
        """``client``'s scope sent the body of ``fn_hash``: its tasks may name that hash."""
        known = self.clients.get(client)
        if known is None:
            return  # bodies come after HELLO; a stranger's is not remembered
        uploads = self.uploaded.setdefault(known.scope, collections.OrderedDict())
        uploads[fn_hash] = None
        uploads.move_to_end(fn_hash)
        if len(uploads) > self.limits.uploads_per_scope:
            uploads.popitem(last=False)

    def refuse_body(self, client: bytes, fn_hash: bytes, reason: str) -> None:
        """A body was too big to take: its tasks fail with ``reason``."""
        known = self.clients.get(client)
        if known is None:
            return
        self.counters["refused_bodies"] += 1
        self.refused_bodies[(known.scope, fn_hash)] = reason
        if len(self.refused_bodies) > 1024:
            self.refused_bodies.popitem(last=False)

    # -- reporting --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "workers": len(self.workers),
            "worker_pids": sorted(w.pid for w in self.workers.values()),
            "capacity": sum(w.capacity for w in self.workers.values()),
            "clients": len(self.clients),
            "queued": len(self.queue)
            + sum(not t.cancelled for t in self.suspects)
            + sum(len(q) for q in self.group_queues.values()),
            "running": sum(len(w.running) for w in self.workers.values()),
            "bodies_cached": len(self.bodies),
            "held_bytes": self.held_bytes,
            "recent_bytes": self.recent_bytes,
            **self.counters,
        }


def _peer_scope(peer: bytes) -> str:
    return "peer:" + peer.hex()
