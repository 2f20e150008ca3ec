"""The router's scheduling state: queues, credits, liveness and redelivery, with no sockets.

``RouterState`` takes events (a peer said hello, tasks arrived, a result came back, time passed)
and answers with decisions (send these tasks to that worker, this result goes to that client).
``router.server`` does the socket work around it. Keeping decisions here means they are tested
in microseconds, without processes, and the socket loop stays a thin translator.

Payload frames are carried as opaque objects; nothing here looks inside them.
"""

from __future__ import annotations

import collections
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from squall.protocol import HASH_SIZE, Status, SubmitItem, error_outcome


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


@dataclass(slots=True)
class Worker:
    peer: bytes
    pid: int
    capacity: int
    last_seen: float
    running: dict[int, Task] = field(default_factory=dict)
    #: a suspect task running alone here: nothing else is sent until it ends
    isolating: int | None = None

    @property
    def free(self) -> int:
        if self.isolating is not None:
            return 0
        return self.capacity - len(self.running)


@dataclass(slots=True)
class Client:
    peer: bytes
    pid: int
    last_seen: float


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
        max_queued: tasks one client may have waiting in the router; more are refused.
        clock: monotonic time source (tests pass a fake one).
    """

    def __init__(
        self,
        liveness: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        max_worker_deaths: int = 3,
        max_queued: int = 1_000_000,
    ) -> None:
        self.liveness = liveness
        self.clock = clock
        self.max_worker_deaths = max_worker_deaths
        self.max_queued = max_queued
        #: tasks that run alone (see ISOLATE_AFTER), FIFO, dispatched before the queue
        self.suspects: collections.deque[Task] = collections.deque()
        self.queued_by_client: collections.Counter[bytes] = collections.Counter()
        self.workers: dict[bytes, Worker] = {}
        self.clients: dict[bytes, Client] = {}
        self.queue: collections.deque[Task] = collections.deque()
        self.tasks: dict[int, Task] = {}
        #: (client, client task id) -> task, for acks, cancels and dependencies
        self.by_client: dict[tuple[bytes, int], Task] = {}
        #: outcomes of recently finished tasks, for a dependent submitted while the outcome was
        #: on its way to the client
        self.recent: collections.OrderedDict[tuple[bytes, int], tuple[int, list[Any]]] = (
            collections.OrderedDict()
        )
        self.recent_size = 10_000
        #: outcomes the router decided itself (lost dependency, worker died mid-stream)
        self.failed: list[tuple[Task, list[Any]]] = []
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
                    "redelivered",
                    "worker_deaths",
                    "worker_lost",
                    "timed_out",
                    "refused_full",
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

    def add_client(self, peer: bytes, pid: int) -> None:
        self.clients[peer] = Client(peer, pid, self.clock())

    def add_worker(self, peer: bytes, pid: int, capacity: int) -> None:
        """Register a worker; a known one saying HELLO again keeps what it runs (it only
        thought we had forgotten it) and updates its capacity."""
        known = self.workers.get(peer)
        if known is not None and known.pid == pid:
            known.capacity = capacity
            known.last_seen = self.clock()
            return
        if known is not None:  # same address, new process: the old one died
            self.remove_worker(peer, died=True)
        self.workers[peer] = Worker(peer, pid, capacity, self.clock())

    def set_capacity(self, peer: bytes, capacity: int) -> None:
        worker = self.workers.get(peer)
        if worker is not None:
            worker.capacity = max(0, capacity)

    def seen(self, peer: bytes) -> None:
        """Any message from a peer is a sign of life."""
        now = self.clock()
        worker = self.workers.get(peer)
        if worker is not None:
            worker.last_seen = now
            return
        client = self.clients.get(peer)
        if client is not None:
            client.last_seen = now

    def remove_worker(self, peer: bytes, died: bool = True) -> list[Task]:
        """Forget a worker; its running tasks go back to the front of the queue.

        ``died``: the worker vanished (silence, crash) rather than handing its tasks back in a
        graceful drain. Each task it held then counts one death; at ``max_worker_deaths`` the
        task fails with WorkerLost, and from ISOLATE_AFTER on it runs alone. Returns the tasks
        that will run again.
        """
        worker = self.workers.pop(peer, None)
        if worker is None:
            return []
        if died:
            self.counters["worker_deaths"] += 1
        requeued, isolated = [], []
        for task in worker.running.values():
            task.worker = None
            if died:
                task.deaths += 1
            if task.cancelled:
                self._settle(task, Status.CANCELLED, [])  # its dependents learn it will not run
            elif task.client not in self.clients:
                self._forget(task)  # nobody is waiting for it: do not run it again
            elif task.items_sent:
                # Running it again would repeat items the reader already has.
                self._fail(
                    task,
                    "WorkerLost",
                    f"the worker died after the stream yielded {task.items_sent} items",
                )
            elif task.deaths >= self.max_worker_deaths:
                self.counters["worker_lost"] += 1
                self._fail(
                    task,
                    "WorkerLost",
                    f"the worker running this task died {task.deaths} times "
                    f"(attempts 1 to {task.attempt + 1}); not trying again",
                )
            elif task.deaths >= ISOLATE_AFTER:
                isolated.append(task)
            else:
                requeued.append(task)
        for task in reversed(requeued):
            task.attempt += 1
            self.queue.appendleft(task)
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
                    "TaskTimeout",
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
        kept = collections.deque(t for t in self.queue if t.client != peer)
        dropped = len(self.queue) - len(kept)
        self.queue = kept
        self.suspects = collections.deque(t for t in self.suspects if t.client != peer)
        self.queued_by_client.pop(peer, None)
        for task in [t for t in self.tasks.values() if t.client == peer and t.worker is None]:
            self._forget(task)  # queued, or waiting for dependencies
        for key in [k for k in self.recent if k[0] == peer]:
            del self.recent[key]
        return dropped

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
        """Queue tasks from ``client`` (FIFO); return how many."""
        n = 0
        for item in items:
            if (client, item.task_id) in self.by_client:
                self.counters["duplicate_submits"] += 1  # resent after a false alarm: known
                continue
            if self.queued_by_client[client] >= self.max_queued:
                self.counters["refused_full"] += 1
                self.failed.append(
                    (
                        Task(0, client, item.task_id, item.fn_hash, item.kind, []),
                        error_outcome(
                            "squall.errors.SquallError",
                            f"the router's queue for this client is full "
                            f"({self.max_queued} tasks); submit more slowly",
                        ),
                    )
                )
                continue
            self.queued_by_client[client] += 1
            self._next_id += 1
            task = Task(
                self._next_id,
                client,
                item.task_id,
                item.fn_hash,
                item.kind,
                item.frames,
                window=item.window,
            )
            self.tasks[task.id] = task
            self.by_client[(client, item.task_id)] = task
            if item.deps:
                self._wire_dependencies(task, item.deps)
            if task.waiting == 0:
                self.queue.append(task)
            n += 1
        self.counters["submitted"] += n
        return n

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
                    error_outcome(
                        "squall.errors.SquallError",
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
        while self.suspects:
            idle = next(
                (
                    w
                    for w in self.workers.values()
                    if not w.running and w.capacity > 0 and w.isolating is None
                ),
                None,
            )
            if idle is None:
                break
            task = self.suspects.popleft()
            self._assign(idle, [task])
            idle.isolating = task.id
            plan.append((idle, [task]))
        if not self.queue:
            return plan
        ready = sorted((w for w in self.workers.values() if w.free > 0), key=lambda w: -w.free)
        total_free = sum(w.free for w in ready)
        n = min(len(self.queue), total_free)
        if n == 0:
            return plan
        left = n
        for worker in ready:
            if left == 0:
                break
            share = worker.free if n == total_free else -(-n * worker.free // total_free)
            share = min(share, left)
            batch = [self.queue.popleft() for _ in range(share)]
            self._assign(worker, batch)
            left -= share
            plan.append((worker, batch))
        return plan

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
        self._settle(task, status, frames or [])
        if task.client not in self.clients or task.cancelled or status == Status.CANCELLED:
            return None
        return task

    def _settle(self, task: Task, status: int, frames: list[Any]) -> None:
        """Forget a finished task; hand its outcome to the tasks waiting for it."""
        self._forget(task)
        key = (task.client, task.client_task_id)
        self.recent[key] = (status, frames)
        if len(self.recent) > self.recent_size:
            self.recent.popitem(last=False)
        for dependent, index in task.dependents or ():
            assert dependent.deps is not None
            dependent.deps[index] = (status, frames)
            dependent.waiting -= 1
            if dependent.waiting == 0 and not dependent.cancelled:
                self.queue.append(dependent)

    def _forget(self, task: Task) -> None:
        self.tasks.pop(task.id, None)
        self.by_client.pop((task.client, task.client_task_id), None)

    def _fail(self, task: Task, error: str, message: str) -> None:
        """Fail a task with a squall error the router makes itself (no pickle involved)."""
        frames = error_outcome(f"squall.errors.{error}", message)
        self._settle(task, Status.ERROR, frames)
        if task.client in self.clients and not task.cancelled:
            self.failed.append((task, frames))

    def take_stops(self) -> dict[bytes, list[int]]:
        """Running tasks of departed clients, per worker, to cancel there."""
        stops, self._stop_on_worker = self._stop_on_worker, {}
        return {w: ids for w, ids in stops.items() if w in self.workers}

    def take_failed(self) -> list[tuple[Task, list[Any]]]:
        failed, self.failed = self.failed, []
        return failed

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
                if task in self.suspects:
                    self.suspects.remove(task)
                elif task.waiting == 0:
                    self.queue.remove(task)
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

    def body_arrived(self, fn_hash: bytes, body: bytes) -> list[bytes]:
        """A client sent a body: cache it; return the workers waiting for it."""
        if not self.bodies.put(fn_hash, body):
            self.counters["bad_bodies"] += 1
            return []
        self.counters["bodies_received"] += 1
        waiting = [w for w in self.body_waiters.pop(fn_hash, ()) if w in self.workers]
        self.counters["bodies_sent"] += len(waiting)
        return waiting

    # -- reporting --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "workers": len(self.workers),
            "worker_pids": sorted(w.pid for w in self.workers.values()),
            "capacity": sum(w.capacity for w in self.workers.values()),
            "clients": len(self.clients),
            "queued": len(self.queue) + len(self.suspects),
            "running": sum(len(w.running) for w in self.workers.values()),
            "bodies_cached": len(self.bodies),
            **self.counters,
        }
