"""The router's core as the socket loop drives it: messages in, instructions out, no sockets.

``RouterState`` takes messages as they arrived (:meth:`RouterState.handle`: the peer, its key's
ZAP user id, the frames) and the passing of time (:meth:`RouterState.tick`), and answers with
instructions (:mod:`squall.router.instructions`) in one outbox, in the order they must go out
(:meth:`RouterState.take_sends`). ``router.server`` only encodes and sends them, so every
decision is tested in microseconds, without processes or sockets.

The core is one object in three layers, each only calling the one below:

- this module, the message layer: decoding each message (``squall.protocol`` reads it), one
  handler per message type, who may say what (membership, a key's role, a routing id bound to
  the key that first used it, a watchdog or node speaking only for its own key's worker),
  garbage counting and cut-offs, UNKNOWN_PEER reminders, and the outbox: STARTED and ack
  translation, batching per peer, the order of sends;
- :mod:`squall.router.peers`: workers and clients joining, liveness, leaving, and what a
  death, a crash, a timeout or a blocked hub does to their tasks;
- :mod:`squall.router.scheduler`: tasks, queues, dispatch, completion, cancel, function
  bodies, counters.

Layers, not separate objects, so the per-task path (submit, dispatch, complete) stays a
method call on ``self`` with no hop through another object. The data they share is in
:mod:`squall.router.model`, their policy numbers in :mod:`squall.router.policy`. The names
tests and the server import from here (``Limits``, ``Task``, ``BodyCache``, ``COUNTERS``,
the policy numbers) are re-exported.

Payload frames are carried as opaque objects; nothing here looks inside them.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from squall import ids, protocol
from squall.auth import CLIENT, WORKER
from squall.errors import ProtocolError, VersionMismatch
from squall.protocol import ErrorCode, MsgType, Role, Status, StreamItem, SubmitItem
from squall.router.background import DEFAULT_RESULT_TTL
from squall.router.callbacks import CALLBACK_OPS
from squall.router.catalog import CATALOG_OPS
from squall.router.inspection import INSPECTION_OPS, Inspection
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
from squall.router.limits import parse_concurrency, parse_rate
from squall.router.model import BodyCache, Client, Limits, Task, Worker
from squall.router.monitor import DEFAULT_HISTORY, Monitor, parse_task_id
from squall.router.peers import Peers
from squall.router.policy import (
    CLIENT_LIVENESS,
    CUT_OFF_REMINDER,
    GARBAGE_LIMIT,
    IMPOSTOR_LOG_INTERVAL,
    ISOLATE_AFTER,
    MAX_IGNORED,
    MAX_OWNERS,
    UNKNOWN_PEER_REMINDER,
)
from squall.router.scheduler import COUNTERS, Scheduler
from squall.router.store import Store

__all__ = [
    "CLIENT_LIVENESS",
    "COUNTERS",
    "CUT_OFF_REMINDER",
    "GARBAGE_LIMIT",
    "IMPOSTOR_LOG_INTERVAL",
    "ISOLATE_AFTER",
    "MAX_IGNORED",
    "MAX_OWNERS",
    "UNKNOWN_PEER_REMINDER",
    "Authority",
    "BodyCache",
    "Client",
    "Limits",
    "Peers",
    "RouterState",
    "Scheduler",
    "Task",
    "Worker",
]

#: messages only a worker's key may send, and only a client's
_WORKER_ONLY = frozenset(
    {
        MsgType.RESULT,
        MsgType.ITEM,
        MsgType.FN_FETCH,
        MsgType.CREDIT,
        MsgType.TIMEOUT,
        MsgType.CRASHED,
        MsgType.RETRIED,
    }
)
_CLIENT_ONLY = frozenset(
    {
        MsgType.SUBMIT,
        MsgType.FN_BODY,
        MsgType.ACK,
        MsgType.CANCEL,
        MsgType.WITHDRAW,
        MsgType.ENQUEUE,
        MsgType.QUERY,
    }
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
    MsgType.RETRIED: protocol.decode_retried,
    MsgType.ENQUEUE: protocol.decode_enqueue,
    MsgType.QUERY: protocol.decode_query,
}


class Authority(Protocol):
    """What the core needs of the keys (``squall.auth.ServerKeys``): a key's role and group.

    Authentication only maps a key to a role; which role may send what is decided here.
    """

    def role_of(self, user_id: str) -> str | None: ...

    def group_of(self, user_id: str) -> str: ...

    def has_group(self, name: str) -> bool: ...

    def is_operator(self, user_id: str) -> bool: ...


#: why a client key may not ask for the operator's view
_NOT_OPERATOR = (
    "this needs an operator's key (squall keygen --out DIR --client NAME --operator): a "
    "client key may only submit and follow its own tasks"
)

#: QUERY ops about periodic schedules
_SCHEDULE_OPS = frozenset(("schedule", "schedules", "unschedule", "pause", "resume"))


class RouterState(Inspection):
    """Everything the router knows and decides, driven by the messages its peers send.

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
        store: where background tasks are kept (``squall.router.store``; in memory if None).
        result_ttl: seconds a background task's outcome is kept unless it says otherwise.
        wall: the wall clock, for the times ``task_info`` reports.
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
        started_delay: float = 0.0,
        store: Store | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        wall: Callable[[], float] = time.time,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        limits = limits or Limits()
        if max_queued is not None:
            limits = dataclasses.replace(limits, max_queued=max_queued)
        super().__init__(
            liveness=liveness,
            clock=clock,
            max_worker_deaths=max_worker_deaths,
            limits=limits,
            blocked_after=blocked_after,
            store=store,
            result_ttl=result_ttl,
            wall=wall,
        )
        self.authority = authority
        if history != DEFAULT_HISTORY:
            self.monitor = Monitor(history)
        # What the socket loop is to send, gathered per pass: replies in arrival order, then
        # per peer (batched) cancels, tasks, stream items, results, STARTED and acks.
        self._replies: list[Send] = []
        self._results: dict[bytes, list[tuple[int, int, list[Any]]]] = collections.defaultdict(list)
        self._items: dict[bytes, list[StreamItem]] = collections.defaultdict(list)
        self._acks: dict[bytes, list[tuple[int, int]]] = collections.defaultdict(list)
        #: client -> its task ids dispatched but not yet announced (STARTED), oldest first; a
        #: task whose result comes first is dropped from it (see policy.STARTED_DELAY)
        self._started: dict[bytes, dict[int, None]] = collections.defaultdict(dict)
        self._started_since: float | None = None
        self.started_delay = started_delay
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
            MsgType.RETRIED: self._on_retried,
            MsgType.ENQUEUE: self._on_enqueue,
            MsgType.QUERY: self._on_query,
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
        self._replies.append(SendHeartbeats([*self.workers, *(c for c in self.clients if c)]))
        now = self.clock() if now is None else now
        self.monitor.sample(now)
        released = self.release_limbo(now)
        if released:
            self._log(
                "warning",
                "background tasks running when the router stopped were not reported; "
                "they run again",
                tasks=released,
            )
        evicted = self.expire()
        if evicted:
            self._log(
                "warning",
                "kept outcomes dropped early: the store is at --max-kept-bytes",
                evicted=evicted,
                kept_bytes=self.store.kept_bytes(),
            )
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
            if self._started_since is None:
                self._started_since = self.clock()
            for task in tasks:
                if task.key:
                    for client, client_task_id in task.watchers or ():
                        started[client][client_task_id] = None
                else:
                    started[task.client][task.client_task_id] = None
            sends.append(SendTasks(worker.peer, tasks))
        if self._items:
            items, self._items = self._items, collections.defaultdict(list)
            sends.extend(SendItems(peer, entries) for peer, entries in items.items())
        results = self._results
        for client, client_task_id, status, frames in self.take_decided():
            results[client].append((client_task_id, status, frames))
            unannounced = started.get(client)
            if unannounced is not None:
                unannounced.pop(client_task_id, None)  # its result says it started
                if not unannounced:
                    del started[client]
        if results:
            self._results = collections.defaultdict(list)
            sends.extend(SendResults(peer, outcomes) for peer, outcomes in results.items())
        if not started:
            self._started_since = None
        elif self.clock() >= self.started_due():
            self._started, self._started_since = collections.defaultdict(dict), None
            sends.extend(SendStarted(peer, list(ids)) for peer, ids in started.items() if ids)
        if self._acks:
            acks, self._acks = self._acks, collections.defaultdict(list)
            sends.extend(SendAcks(peer, counts) for peer, counts in acks.items())
        if self.enqueued:
            sends.extend(SendEnqueued(c, t) for c, t in self.take_enqueued().items())
        if self.monitor.pending:
            sends.extend(SendEvents(p, e) for p, e in self.monitor.take_events())
        return sends

    def started_due(self) -> float:
        """When the STARTED messages gathered so far are due (inf: none gathered); the socket
        loop wakes by then to take them."""
        if self._started_since is None:
            return math.inf
        return self._started_since + self.started_delay

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
        if now - self._last_impostor_log > IMPOSTOR_LOG_INTERVAL:
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

    def _operator(self, peer: bytes) -> bool:
        """Whether ``peer`` may see the fleet and act on any task or worker: anyone without
        authentication (the router is then reachable by its own user only), else a key of
        clients/operators/."""
        if self.authority is None:
            return True
        owner = self._owners.get(peer)
        return owner is not None and self.authority.is_operator(owner)

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
            self.add_worker(
                peer, hello.pid, hello.capacity, group, hello.queues, hello.functions, hello.host
            )
            self._log(
                "info",
                "worker joined",
                worker_pid=hello.pid,
                capacity=hello.capacity,
                group=group or None,
                queues=",".join(hello.queues),
                functions=len(hello.functions) or None,
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

    def _on_enqueue(self, peer: bytes, items: list[SubmitItem]) -> None:
        if peer not in self.clients:
            self._tell_unknown(peer)  # as for SUBMIT: it sends them again after its HELLO
            return
        for client, client_task_id in self.enqueue(peer, items):
            self._started[client][client_task_id] = None
            if self._started_since is None:
                self._started_since = self.clock()

    def _on_query(self, peer: bytes, message: tuple[int, Any, list[Any]]) -> None:
        """A client asks about kept tasks by id: ``{"op": "info" | "cancel", "ids": [...]}``
        (the answer has one entry per id, in order); sets a queue's limits: ``{"op":
        "limit", "queue": ..., "rate": "100/s" | null, "concurrency": 4 | null}``; or
        manages schedules (:meth:`_schedule_op`)."""
        if peer not in self.clients:
            self._tell_unknown(peer)
            return
        request, query, frames = message
        op = query.get("op") if isinstance(query, dict) else None
        if op == "limit":
            self._replies.append(SendAnswer(peer, request, self._set_limit(query)))
            return
        if op in _SCHEDULE_OPS:
            self._replies.append(SendAnswer(peer, request, self._schedule_op(peer, query, frames)))
            return
        if op in CATALOG_OPS:
            self._replies.append(SendAnswer(peer, request, self.catalog_op(query, frames)))
            return
        if op in CALLBACK_OPS:
            self._replies.append(SendAnswer(peer, request, self.callback_op(query)))
            return
        if op in INSPECTION_OPS:
            allowed = self._operator(peer)
            refusal = {"error": _NOT_OPERATOR, "code": "not_operator"}
            view = self.inspection_op(peer, query) if allowed else refusal
            self._replies.append(SendAnswer(peer, request, view))
            return
        if frames:
            raise ProtocolError(f"QUERY: {op!r} takes no frames")
        try:
            op, texts = query["op"], query["ids"]
            if op == "cancel":  # by an operator too: any task's id (squall.router.monitor)
                for text in texts:
                    parse_task_id(text)
                keys = []
            else:
                keys = [ids.from_text(text) for text in texts]
        except (TypeError, KeyError, ValueError) as exc:
            raise ProtocolError(f"QUERY: {exc}"[:200]) from None
        answer: list[dict[str, Any]] = []
        if op == "info":
            answer = [self.task_info(key) for key in keys]
        elif op == "cancel":
            operator = self._operator(peer)
            for text in texts:
                if not operator and not self.may_cancel(peer, text):
                    answer.append({"id": text, "cancelled": False, "error": _NOT_OPERATOR})
                    continue
                cancelled, stops = self.cancel_by_id(text)
                for worker, task_ids in stops.items():
                    self._stop_on_worker.setdefault(worker, []).extend(task_ids)
                answer.append({"id": text, "cancelled": cancelled})
        else:
            raise ProtocolError(f"QUERY: unknown op {op!r}"[:200])
        self._replies.append(SendAnswer(peer, request, answer))

    def _schedule_op(self, peer: bytes, query: dict[str, Any], frames: list[Any]) -> Any:
        """``{"op": "schedule", "spec": {...}, "function": name}`` with the body and payload
        frames adds or replaces one; ``schedules`` lists them; ``unschedule``, ``pause`` and
        ``resume`` take a ``name``."""
        op = query["op"]
        if op == "schedule":
            answer = self.register(peer, query, frames)
            if "error" not in answer:
                self._log(
                    "info", "schedule registered", schedule=answer["name"], spec=answer["spec"]
                )
            return answer
        if op == "schedules":
            return [self.describe(s) for s in self.timetable]
        name = query.get("name")
        if not isinstance(name, str):
            return {"error": "a schedule's name is a string"}
        if op == "unschedule":
            return {"name": name, "done": self.unregister(name)}
        return {"name": name, "done": self.set_paused(name, op == "pause")}

    def _set_limit(self, query: dict[str, Any]) -> dict[str, Any]:
        """Set a queue's global limits at run time; the answer is the limits now, or the
        one-line reason they were refused."""
        try:
            queue = query["queue"]
            if not isinstance(queue, str) or not protocol.valid_queue(queue):
                raise ValueError(f"{queue!r} is not a queue name")
            count, period = None, 1.0
            if query.get("rate") is not None:
                count, period = parse_rate(str(query["rate"]))
            concurrency = query.get("concurrency")
            if concurrency is not None:
                concurrency = parse_concurrency(concurrency)
        except (KeyError, ValueError) as exc:
            return {"error": str(exc)[:200]}
        self.limiter.set(queue, count, period, concurrency)
        self._log(
            "info", "queue limit set", queue=queue, rate=query.get("rate"), concurrency=concurrency
        )
        limit = self.limiter.limits.get(queue)
        return {
            "queue": queue,
            **(limit.describe() if limit else {"rate": None, "concurrency": None}),
        }

    def _on_result(self, peer: bytes, items: list[protocol.ResultItem]) -> None:
        if peer not in self.workers:
            self._tell_unknown(peer)
            self.counters["stale_results"] += len(items)
            return
        results, started = self._results, self._started
        for item in items:
            task = self.complete(peer, item.task_id, item.status, item.frames)
            if task is not None:
                results[task.client].append((task.client_task_id, item.status, item.frames))
                unannounced = started.get(task.client)
                if unannounced is not None:
                    unannounced.pop(task.client_task_id, None)  # its result says it started
                    if not unannounced:
                        del started[task.client]
                        if not started:
                            self._started_since = None  # nothing left: no wake-up for it
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

    def _on_fn_body(self, peer: bytes, message: tuple[bytes, Any, str]) -> None:
        fn_hash, fn_body, name = message
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
        if good and peer in self.clients:
            self.monitor.name_function(fn_hash, name)
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
            worker = self.workers.get(peer)
            if worker is not None:
                if beat.rss:
                    worker.rss = beat.rss
            elif peer not in self.clients:
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

    def _on_retried(self, peer: bytes, items: list[protocol.Retried]) -> None:
        """A worker's tasks failed an attempt and run again there (their ``retries``)."""
        worker = self.workers.get(peer)
        if worker is None:
            return
        for item in items:
            task = worker.running.get(item.task_id)
            if task is not None:
                task.retries = item.attempt
                self.counters["retried"] += 1
                self.monitor.retried(task, item, self.wall())

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
        stats = {**self.stats(), **self.kept_stats()}
        if self.authority is not None:
            # Keys may only run or submit tasks: which processes run where, and how many
            # clients there are, is no business of theirs.
            for private in ("worker_pids", "clients"):
                stats.pop(private, None)
        self._replies.append(SendStats(peer, stats))
