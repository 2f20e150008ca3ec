"""Background tasks: kept by the router, owned by no client, found again by id.

:class:`Background` adds to the :class:`~squall.router.scheduler.Scheduler` the tasks a
client *enqueues* rather than submits. Such a task belongs to the router: it sits in the queues
under :data:`KEPT`, a client entry of the router's own that never leaves, so a submitter that
exits or dies takes nothing with it. Every client that wants its outcome (the one that enqueued
it, and any that attached later by id) is a *watcher*; the outcome goes to each that is still
connected, and is kept in the store for its time to live, so a watcher arriving later still
gets it.

The store (:mod:`squall.router.store`) holds the record of each kept task: its payload frames
and function body (it must run after its client is gone), its state and, once finished, its
outcome. With ``--data`` it is SQLite on disk, and a router started again on the same
directory comes back with every task: queued ones queue again; ones that were running wait in
:attr:`~squall.router.scheduler.Scheduler.limbo` for a grace period, so that a worker that
finished one meanwhile reports it instead of it running twice, and then queue again.

Like the scheduler it speaks no protocol: ``RouterState`` turns what it decides into sends,
and the socket loop commits the store before anything goes out, so an ENQUEUED confirmation
never precedes the commit of what it confirms.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from squall import ids
from squall.errors import ProtocolError
from squall.protocol import (
    ID_SIZE,
    KIND_JSON,
    KIND_STREAM,
    EnqueueFlag,
    FailureCode,
    Status,
    SubmitItem,
    failure_outcome,
    read_error_summary,
)
from squall.router.model import Client, Limits, Task, frames_size
from squall.router.policy import RECOVERY_GRACE
from squall.router.scheduler import Scheduler
from squall.router.store import KeptTask, MemoryStore, Store

#: the router's own client entry: background tasks queue under it, and it never leaves
KEPT = b""

#: seconds a finished background task's outcome is kept by default (--result-ttl)
DEFAULT_RESULT_TTL = 86_400.0

_STATES: dict[int, str] = {
    Status.OK: "succeeded",
    Status.ERROR: "failed",
    Status.CANCELLED: "cancelled",
}


def frame_bytes(frames: Iterable[Any]) -> list[bytes]:
    return [bytes(f.buffer if hasattr(f, "buffer") else f) for f in frames]


class Background(Scheduler):
    """The scheduler, with background tasks kept in ``store`` and their watchers.

    Args:
        store: where kept tasks live (a :class:`~squall.router.store.MemoryStore` if None).
        result_ttl: seconds a finished task's outcome is kept unless the task says otherwise.
        wall: the wall clock (Unix seconds) for the times people read; tests pass a fake one.
        clock, limits: as for :class:`~squall.router.scheduler.Scheduler`.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits | None = None,
        store: Store | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock, limits=limits, wall=wall)
        self.store: Store = store if store is not None else MemoryStore()
        self.result_ttl = result_ttl
        self.clients[KEPT] = Client(KEPT, 0, math.inf, scope="router")
        #: unfinished background tasks by id
        self.kept: dict[bytes, Task] = {}
        #: client -> ids of its ENQUEUE items the router now holds, for ENQUEUED (sent only
        #: after the store's commit)
        self.enqueued: dict[bytes, list[int]] = collections.defaultdict(list)
        #: function hashes whose body is in the store already
        self._stored_bodies: set[bytes] = set()
        #: when the tasks in limbo run again, if nobody reported them
        self.limbo_until = math.inf
        self._recover()

    # -- recovery ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Take back every unfinished task of the store (a restart on the same --data)."""
        # Above every id a kept task ever had, so no new task is confused with an old one.
        self._next_id = max(self._next_id, self.store.max_router_id() + (1 << 32))
        now = self.clock()
        for record in self.store.unfinished():
            task = Task(
                record.router_id,
                KEPT,
                record.router_id,
                record.fn_hash,
                record.kind,
                list(record.frames),
                # (the attempt running at the stop, for one that was running)
                attempt=max(0, record.attempts - (record.state == "running")),
                window=record.window,
                size=frames_size(record.frames),
                key=record.id,
                watchers=[],
                group=record.group,
                submitted_at=record.submitted,
            )
            self.monitor.name_function(record.fn_hash, record.function)
            if record.route is not None:
                self.route(task, *record.route)
            if record.state == "running":
                self._hold(task, queued=False)
                self.limbo[task.id] = task
                self.limbo_until = now + RECOVERY_GRACE
            else:
                self._hold(task)
                self.ready(task)  # one that fell due while the router was down runs now

    def release_limbo(self, now: float) -> int:
        """Past the grace period, tasks in limbo that no worker reported run again."""
        if not self.limbo or now < self.limbo_until:
            return 0
        tasks, self.limbo = list(self.limbo.values()), {}
        self.limbo_until = math.inf
        for task in tasks:
            task.attempt += 1
            self.store.requeued(task.key)
            self._queue_of(task).append(task)
        self.queued_by_client[KEPT] += len(tasks)
        self.counters["redelivered"] += len(tasks)
        return len(tasks)

    def _hold(self, task: Task, queued: bool = True) -> None:
        self.tasks[task.id] = task
        self.by_client[(KEPT, task.id)] = task
        self.kept[task.key] = task
        self.queued_by_client[KEPT] += queued
        self.bytes_by_client[KEPT] += task.size
        self.held_bytes += task.size

    # -- enqueue and attach -----------------------------------------------------------------

    def enqueue(self, client: bytes, items: Iterable[SubmitItem]) -> list[tuple[bytes, int]]:
        """Keep new background tasks, or attach ``client`` to kept ones (known ids, and items
        flagged ATTACH). Returns the (client, client task id) of watchers that attached to a
        running task: they are told it started.

        Enqueueing an id the router holds already attaches to it: a client that resends its
        ENQUEUEs after a lost connection never makes a second task.
        """
        known = self.clients.get(client)
        uploads = self.uploaded.get(known.scope) if known is not None else None
        records: list[KeptTask] = []
        running: list[tuple[bytes, int]] = []
        now = self.wall()
        items = list(items)
        if any(len(item.key) != ID_SIZE for item in items):
            raise ProtocolError("ENQUEUE: a task id has 16 bytes")
        stored = self.store.get_many([i.key for i in items if i.key not in self.kept])
        for item in items:
            task = self.kept.get(item.key)
            if task is not None:
                self._watch(task, client, item.task_id)
                if task.worker is not None or task.id in self.limbo:
                    running.append((client, item.task_id))
                if not item.flags & EnqueueFlag.ATTACH:
                    self.enqueued[client].append(item.task_id)
                continue
            record = stored.get(item.key)
            if record is not None and record.finished is not None:
                self.decided.append((client, item.task_id, record.status, list(record.outcome)))
                self.counters["attached"] += 1
                if not item.flags & EnqueueFlag.ATTACH:
                    self.enqueued[client].append(item.task_id)
                continue
            if item.flags & EnqueueFlag.ATTACH:
                self._not_found(client, item)
                continue
            refusal = self._kept_refusal(client, item, uploads)
            if refusal is not None:
                self.decided.append((client, item.task_id, Status.ERROR, failure_outcome(*refusal)))
                continue
            task, record = self._keep(item, known.group if known is not None else "", now)
            self._watch(task, client, item.task_id)
            records.append(record)
            self.enqueued[client].append(item.task_id)
        if records:
            self.store.add(records)
            self.counters["enqueued"] += len(records)
            self.counters["submitted"] += len(records)
        return running

    def _keep(self, item: SubmitItem, group: str, now: float) -> tuple[Task, KeptTask]:
        """Hold a new background task, queued or delayed; its record for the store."""
        self._next_id += 1
        task = Task(
            self._next_id,
            KEPT,
            self._next_id,
            item.fn_hash,
            item.kind,
            item.frames,
            window=item.window,
            size=frames_size(item.frames),
            group=group,
            key=item.key,
            watchers=[],
            submitted_at=now,
        )
        if item.route is not None:
            self.route(task, *item.route)
        self._hold(task)
        if item.name:
            self.monitor.name_function(item.fn_hash, item.name)
        self.monitor.submitted((task,))
        self.ready(task)
        record = KeptTask(
            item.key,
            task.id,
            item.fn_hash,
            item.kind,
            item.window,
            frame_bytes(item.frames),
            item.name,
            now,
            item.keep or self.result_ttl,
            group=group,
            route=item.route,
        )
        return task, record

    def _kept_refusal(
        self, client: bytes, item: SubmitItem, uploads: Any
    ) -> tuple[FailureCode, str] | None:
        """Why a background task is refused: the limits of the router's own queue, a body the
        client never uploaded (or that the router no longer has), a stream."""
        if item.kind & KIND_STREAM:
            return FailureCode.UNKNOWN_FUNCTION, (
                "a background task is a call: stream a generator with ex.stream() instead"
            )
        refusal = self._refusal(KEPT, item, frames_size(item.frames), uploads)
        if refusal is not None:
            return refusal
        called = item.route is not None and item.route.function
        if not called and item.fn_hash not in self._stored_bodies:  # (a name has no body)
            body = self.bodies.get(item.fn_hash) or self.store.body(item.fn_hash)
            if body is None:
                return FailureCode.UNKNOWN_FUNCTION, (
                    "the router no longer has this function's body: enqueue it again"
                )
            self.store.put_body(item.fn_hash, body)
            self._stored_bodies.add(item.fn_hash)
        return None

    def _not_found(self, client: bytes, item: SubmitItem) -> None:
        text = ids.to_text(item.key)
        if self.store.expired(item.key):
            why = f"task {text} expired: its outcome was kept for its time to live and is gone"
        else:
            why = f"no task {text} is kept by this router (never enqueued here, or long gone)"
        self.counters["not_found"] += 1
        outcome = failure_outcome(FailureCode.TASK_NOT_FOUND, why)
        self.decided.append((client, item.task_id, Status.ERROR, outcome))

    def _watch(self, task: Task, client: bytes, client_task_id: int) -> None:
        assert task.watchers is not None
        key = (client, client_task_id)
        if key not in self.by_client:
            task.watchers.append(key)
            self.by_client[key] = task
            self.counters["attached"] += 1

    def drop_watchers(self, client: bytes) -> None:
        """A client left: its attachments go (its background tasks stay)."""
        for task in self.kept.values():
            if task.watchers and any(w[0] == client for w in task.watchers):
                task.watchers = [w for w in task.watchers if w[0] != client]
        for key in [k for k in self.by_client if k[0] == client]:
            del self.by_client[key]

    def take_enqueued(self) -> dict[bytes, list[int]]:
        """Confirmations to send, per client: only after the store committed."""
        enqueued, self.enqueued = self.enqueued, collections.defaultdict(list)
        return {c: t for c, t in enqueued.items() if c in self.clients}

    # -- hooks the scheduler calls -----------------------------------------------------------

    def kept_body(self, fn_hash: bytes) -> bytes | None:
        """A worker misses the body of a background task's function (the cache is empty
        after a restart, or dropped it): the store has it."""
        body = self.store.body(fn_hash)
        if body is not None:
            self.bodies.put(fn_hash, body)
        return body

    def kept_started(self, task: Task) -> None:
        self.store.started(task.key, task.attempt + 1, self.wall())

    def kept_settled(self, task: Task, status: int, frames: list[Any]) -> None:
        """Keep the outcome; hand it to every watcher still connected."""
        self._forget(task)
        self.kept.pop(task.key, None)
        self.limbo.pop(task.id, None)
        error_type = error_message = ""
        if status == Status.CANCELLED:
            frames = failure_outcome(FailureCode.CANCELLED, "the task was cancelled")
        if status != Status.OK and frames:
            try:
                summary = read_error_summary(frames[0])
                error_type, error_message = summary.type, summary.message
            except ProtocolError:
                error_type = "squall.TaskFailed"
        state = _STATES.get(status, "failed")
        out_status = Status.OK if status == Status.OK else Status.ERROR
        self.store.finished(
            task.key, state, out_status, frame_bytes(frames), self.wall(), error_type, error_message
        )
        for watcher in task.watchers or ():
            self.by_client.pop(watcher, None)
            if watcher[0] in self.clients:
                self.decided.append((watcher[0], watcher[1], out_status, frames))

    # -- queries ----------------------------------------------------------------------------

    def task_info(self, key: bytes) -> dict[str, Any]:
        """What is known of one kept task, as JSON for the client (no payload)."""
        record = self.store.get(key)
        text = ids.to_text(key)
        if record is None:
            return {"id": text, "error": "expired" if self.store.expired(key) else "unknown"}
        task = self.kept.get(key)
        state = record.state
        if task is not None and task.id in self.limbo:
            state = "running"
        elif task is not None and task.held:
            state = "scheduled"
        return {
            "id": text,
            "state": state,
            "attempts": record.attempts,
            "function": record.function,
            "submitted": record.submitted,
            "started": record.started,
            "finished": record.finished,
            "expires": record.expires,
            "queue": task.queue if task is not None else None,
            "not_before": (task.not_before or None) if task is not None else None,
            "error_type": record.error_type or None,
            "error_message": record.error_message or None,
            "json": bool(record.kind & KIND_JSON),
            "reason": self.waiting_reason(task) if state == "queued" else None,
        }

    def waiting_reason(self, task: Task | None) -> str | None:
        """Why a queued task has not started, when nothing will start it as things are."""
        if task is None:
            return None
        if task.function and task.function not in self.published:
            served = any(task.function in w.functions for w in self.workers.values())
            if not served:
                return f"no worker serves function {task.function!r} (squall worker --import)"
        if not any(task.queue in w.queues for w in self.workers.values()):
            return f"no worker serves queue {task.queue!r}"
        return None

    def cancel_kept(self, key: bytes) -> tuple[bool, dict[bytes, list[int]]]:
        """Cancel a kept task by id: True if it had not finished (a queued one is dropped at
        once, a running one is stopped). Also the running ones to stop, per worker."""
        task = self.kept.get(key)
        if task is None or task.cancelled:
            return False, {}
        if task.id in self.limbo:  # running somewhere we cannot reach yet: never run again
            del self.limbo[task.id]
            task.cancelled = True
            self.counters["cancelled"] += 1
            self._settle(task, Status.CANCELLED, [])
            return True, {}
        return True, self.cancel(KEPT, [task.id])

    def expire(self) -> int:
        """Drop outcomes past their time to live (and the oldest past the store's bound);
        return how many went because of the bound."""
        return self.store.expire(self.wall())

    def kept_stats(self) -> dict[str, Any]:
        return {
            "kept_unfinished": len(self.kept),
            "kept_stored": len(self.store),
            "kept_bytes": self.store.kept_bytes(),
            "kept_in_limbo": len(self.limbo),
        }
