"""The router's scheduling state: queues, credits, liveness and redelivery, with no sockets.

``RouterState`` takes events (a peer said hello, tasks arrived, a result came back, time passed)
and answers with decisions (send these tasks to that worker, this result goes to that client).
``router.server`` does the socket work around it. Keeping decisions here means they are tested
in microseconds, without processes, and the socket loop stays a thin translator.

Payload frames are carried as opaque objects; nothing here looks inside them.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from squall.protocol import HASH_SIZE, FailureCode, Status, SubmitItem, failure_outcome
from squall.router.fairqueue import FairQueue


@dataclass(slots=True, eq=False)  # compared by identity: queue.remove() must be cheap
class Task:
    """One accepted task, from submit until its outcome reaches the client."""

    id: int
    client: bytes
    client_task_id: int
    fn_hash: bytes
    kind: int
    frames: list[Any]
    attempt: int = 0
    worker: bytes | None = None
    window: int = 0
    #: outcomes (status, frames) of the tasks this one takes as arguments, in argument order
    deps: list[tuple[int, list[Any]] | None] | None = None
    waiting: int = 0  # dependencies without an outcome yet; queued only at 0
    dependents: list[tuple[Task, int]] | None = None  # None, not [], keeps submit cheap
    cancelled: bool = False
    items_sent: int = 0  # stream items already forwarded: such a task cannot simply run again
    #: how often a worker died while running this task; from ISOLATE_AFTER on, it runs alone
    deaths: int = 0
    #: bytes of its argument frames, held until its outcome: counted against the byte limits
    size: int = 0
    #: the worker group its client restricted it to; "" for any worker
    group: str = ""


@dataclass(slots=True)
class Worker:
    peer: bytes
    pid: int
    capacity: int
    last_seen: float
    running: dict[int, Task] = field(default_factory=dict)
    #: a suspect task running alone here: nothing else is sent until it ends
    isolating: int | None = None
    #: the group of its key (a subfolder of the auth directory's workers/), "" for none
    group: str = ""
    #: its watchdog reports the hub blocked (a task that does not yield): nothing new goes there
    blocked: bool = False

    @property
    def free(self) -> int:
        if self.isolating is not None or self.blocked:
            return 0
        return self.capacity - len(self.running)


@dataclass(slots=True)
class Client:
    peer: bytes
    pid: int
    last_seen: float
    #: who uploaded its function bodies: its key with authentication, else the peer itself
    scope: str = ""
    #: only workers of this group may run its tasks; "" for any listed worker
    group: str = ""


def frames_size(frames: Iterable[Any]) -> int:
    """Bytes in payload frames (bytes, ``zmq.Frame`` or buffers alike)."""
    return sum(len(f) for f in frames)


@dataclass(frozen=True)
class Limits:
    """What the router may hold, in bytes and counts, so that no peer can exhaust its memory.

    Args:
        max_queued: tasks one client may have in the router.
        client_bytes: argument bytes one client's tasks may hold in the router (queued,
            running, waiting for dependencies).
        held_bytes: argument bytes all clients' tasks together may hold.
        recent_bytes: bytes of finished outcomes kept for dependents submitted late.
        recent_count: how many such outcomes are kept.
        body_size: bytes one function body may have (refused, and its tasks failed, above).
        max_capacity: tasks one worker process may claim to run at once.
        uploads_per_scope: function hashes remembered per uploader (see ``uploaded``).
    """

    max_queued: int = 1_000_000
    client_bytes: int = 512 << 20
    held_bytes: int = 2 << 30
    recent_bytes: int = 64 << 20
    recent_count: int = 10_000
    body_size: int = 16 << 20
    max_capacity: int = 100_000
    uploads_per_scope: int = 65_536


class BodyCache:
    """Function bodies by hash, least recently used first out, bounded in count and bytes."""

    def __init__(self, max_items: int = 4096, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._bodies: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, fn_hash: bytes) -> bytes | None:
        body = self._bodies.get(fn_hash)
        if body is not None:
            self._bodies.move_to_end(fn_hash)
        return body

    def put(self, fn_hash: bytes, body: bytes) -> bool:
        """Keep ``body`` if it really hashes to ``fn_hash`` (and fits); return whether the hash
        was right.

        Checking the hash stops one client from planting a body under another's hash.
        """
        if hashlib.blake2b(body, digest_size=HASH_SIZE).digest() != fn_hash:
            return False
        if fn_hash in self._bodies or len(body) > self.max_bytes:
            return True
        self._bodies[fn_hash] = body
        self._bytes += len(body)
        while len(self._bodies) > self.max_items or self._bytes > self.max_bytes:
            _, old = self._bodies.popitem(last=False)
            self._bytes -= len(old)
        return True


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
CLIENT_LIVENESS = 5


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
    """

    def __init__(
        self,
        liveness: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        max_worker_deaths: int = 3,
        max_queued: int | None = None,
        limits: Limits | None = None,
        blocked_after: float = 2.0,
    ) -> None:
        self.liveness = liveness
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
        self.counters: collections.Counter[str] = collections.Counter(
            {
                name: 0
                for name in (
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
            }
        )

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

        Its running tasks are marked cancelled; :meth:`running_of_departed` tells the server
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
            if task.deaths < ISOLATE_AFTER and task.worker is None and task in self.suspects:
                self.suspects.remove(task)  # no longer a suspect: back to the normal queue
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

    def expired_workers(self) -> list[bytes]:
        """Workers silent for longer than the liveness window."""
        deadline = self.clock() - self.liveness
        return [peer for peer, w in self.workers.items() if w.last_seen < deadline]

    def expired_clients(self) -> list[bytes]:
        """Clients silent for CLIENT_LIVENESS windows: gone (killed, or cut off) for good.

        A client's I/O thread competes for the GIL with the application, so it gets a longer
        window than a worker before its queued tasks are dropped.
        """
        deadline = self.clock() - CLIENT_LIVENESS * self.liveness
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
        """Forget a finished task; hand its outcome to the tasks waiting for it."""
        self._forget(task)
        key = (task.client, task.client_task_id)
        self.recent[key] = (status, frames)
        self.recent_bytes += frames_size(frames)
        limits = self.limits
        while self.recent and (
            len(self.recent) > limits.recent_count or self.recent_bytes > limits.recent_bytes
        ):
            _, (_, old) = self.recent.popitem(last=False)
            self.recent_bytes -= frames_size(old)
        for dependent, index in task.dependents or ():
            assert dependent.deps is not None
            dependent.deps[index] = (status, frames)
            dependent.waiting -= 1
            if dependent.waiting == 0 and not dependent.cancelled:
                self._queue_of(dependent).append(dependent)

    def _forget(self, task: Task) -> None:
        if self.tasks.pop(task.id, None) is not None:
            self.bytes_by_client[task.client] -= task.size
            if self.bytes_by_client[task.client] <= 0:
                del self.bytes_by_client[task.client]
            self.held_bytes -= task.size
        self.by_client.pop((task.client, task.client_task_id), None)

    def _fail(self, task: Task, code: FailureCode, message: str) -> None:
        """Fail a task with a squall error the router makes itself (no pickle involved)."""
        frames = failure_outcome(code, message)
        self._settle(task, Status.ERROR, frames)
        if task.client in self.clients and not task.cancelled:
            self.decided.append((task.client, task.client_task_id, Status.ERROR, frames))

    def take_stops(self) -> dict[bytes, list[int]]:
        """Running tasks of departed clients, per worker, to cancel there."""
        stops, self._stop_on_worker = self._stop_on_worker, {}
        return {w: ids for w, ids in stops.items() if w in self.workers}

    def take_decided(self) -> list[tuple[bytes, int, int, list[Any]]]:
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
                if task.deaths >= ISOLATE_AFTER and task in self.suspects:
                    self.suspects.remove(task)
                elif task.waiting == 0:
                    self._queue_of(task).drop(task)  # skipped when its turn comes
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
            + len(self.suspects)
            + sum(len(q) for q in self.group_queues.values()),
            "running": sum(len(w.running) for w in self.workers.values()),
            "bodies_cached": len(self.bodies),
            "held_bytes": self.held_bytes,
            "recent_bytes": self.recent_bytes,
            **self.counters,
        }


def _peer_scope(peer: bytes) -> str:
    return "peer:" + peer.hex()
