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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from squall.protocol import HASH_SIZE, SubmitItem


@dataclass(slots=True)
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


@dataclass(slots=True)
class Worker:
    peer: bytes
    pid: int
    capacity: int
    last_seen: float
    running: dict[int, Task] = field(default_factory=dict)

    @property
    def free(self) -> int:
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


class RouterState:
    """Everything the router knows and decides.

    Args:
        liveness: seconds of silence after which a worker is declared dead.
        clock: monotonic time source (tests pass a fake one).
    """

    def __init__(self, liveness: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.liveness = liveness
        self.clock = clock
        self.workers: dict[bytes, Worker] = {}
        self.clients: dict[bytes, Client] = {}
        self.queue: collections.deque[Task] = collections.deque()
        self.tasks: dict[int, Task] = {}
        self.bodies = BodyCache()
        #: fn hash -> workers waiting for its body
        self.body_waiters: dict[bytes, set[bytes]] = {}
        self._next_id = 0
        self.counters: collections.Counter[str] = collections.Counter(
            {
                name: 0
                for name in (
                    "submitted",
                    "dispatched",
                    "completed",
                    "redelivered",
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

    def add_worker(self, peer: bytes, pid: int, capacity: int) -> list[Task]:
        """Register (or re-register) a worker; return tasks it held that go back to the queue."""
        requeued = self.remove_worker(peer) if peer in self.workers else []
        self.workers[peer] = Worker(peer, pid, capacity, self.clock())
        return requeued

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

    def remove_worker(self, peer: bytes) -> list[Task]:
        """Forget a worker; its running tasks go back to the front of the queue, attempt + 1."""
        worker = self.workers.pop(peer, None)
        if worker is None:
            return []
        requeued = [t for t in worker.running.values() if t.client in self.clients]
        for task in worker.running.values():
            if task.client not in self.clients:
                del self.tasks[task.id]  # nobody is waiting for it: do not run it again
        for task in reversed(requeued):
            task.worker = None
            task.attempt += 1
            self.queue.appendleft(task)
        self.counters["redelivered"] += len(requeued)
        for waiting in self.body_waiters.values():
            waiting.discard(peer)
        return requeued

    def remove_client(self, peer: bytes) -> int:
        """Forget a client and drop its queued tasks; return how many were dropped.

        Tasks already running finish; their results are discarded when they come back.
        """
        self.clients.pop(peer, None)
        kept = collections.deque(t for t in self.queue if t.client != peer)
        dropped = len(self.queue) - len(kept)
        for task in self.queue:
            if task.client == peer:
                del self.tasks[task.id]
        self.queue = kept
        return dropped

    def expired_workers(self) -> list[bytes]:
        """Workers silent for longer than the liveness window."""
        deadline = self.clock() - self.liveness
        return [peer for peer, w in self.workers.items() if w.last_seen < deadline]

    # -- tasks ------------------------------------------------------------------------------

    def submit(self, client: bytes, items: Iterable[SubmitItem]) -> int:
        """Queue tasks from ``client`` (FIFO); return how many."""
        n = 0
        for item in items:
            self._next_id += 1
            task = Task(self._next_id, client, item.task_id, item.fn_hash, item.kind, item.frames)
            self.tasks[task.id] = task
            self.queue.append(task)
            n += 1
        self.counters["submitted"] += n
        return n

    def dispatch(self) -> list[tuple[Worker, list[Task]]]:
        """Decide which queued tasks go to which worker now.

        Only workers with free capacity get tasks. When there are fewer tasks than free slots,
        each worker gets a share in proportion to its free capacity (largest first), so load
        spreads across processes instead of piling onto the first one.
        """
        if not self.queue:
            return []
        ready = sorted((w for w in self.workers.values() if w.free > 0), key=lambda w: -w.free)
        total_free = sum(w.free for w in ready)
        n = min(len(self.queue), total_free)
        if n == 0:
            return []
        plan: list[tuple[Worker, list[Task]]] = []
        left = n
        for worker in ready:
            if left == 0:
                break
            share = worker.free if n == total_free else -(-n * worker.free // total_free)
            share = min(share, left)
            batch = [self.queue.popleft() for _ in range(share)]
            for task in batch:
                task.worker = worker.peer
                worker.running[task.id] = task
            left -= share
            plan.append((worker, batch))
        self.counters["dispatched"] += n
        return plan

    def complete(self, worker_peer: bytes, task_id: int) -> Task | None:
        """A worker reports an outcome; return the task if the outcome should reach its client.

        None means the outcome is stale (the task was taken away from this worker, e.g. after
        it was declared dead) or its client is gone: it is dropped so each task resolves once.
        """
        worker = self.workers.get(worker_peer)
        task = worker.running.pop(task_id, None) if worker is not None else None
        if task is None:
            self.counters["stale_results"] += 1
            return None
        del self.tasks[task_id]
        self.counters["completed"] += 1
        if task.client not in self.clients:
            return None
        return task

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
            "queued": len(self.queue),
            "running": sum(len(w.running) for w in self.workers.values()),
            "bodies_cached": len(self.bodies),
            **self.counters,
        }
