"""Workers and clients coming and going, and what that does to their tasks.

:class:`Peers` adds to the :class:`~squall.router.scheduler.Scheduler` everything about the
peers themselves: registering them (a worker's capacity, a client's upload scope and worker
group), liveness (any message is a sign of life; silence past the window is death, unless the
router itself was the one not running), and redelivery when a worker goes: its tasks run again
at the front of the queue, each death charged to the tasks it held (or only to the culprits
its node names), a task that keeps killing workers runs alone and then fails with WorkerLost,
a task past its hard time limit fails with TaskTimeout, and a blocked hub's unread tasks go
elsewhere without charge.

Like the scheduler it speaks no protocol: who said so, and whether they were allowed to, is
:class:`~squall.router.state.RouterState`'s business.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable

from squall.protocol import DEFAULT_QUEUE, FailureCode, Status
from squall.router.background import DEFAULT_RESULT_TTL, KEPT
from squall.router.callbacks import Callbacks
from squall.router.model import Client, Limits, Task, Worker, frames_size
from squall.router.policy import CLIENT_LIVENESS, ISOLATE_AFTER, MAX_CHARGED
from squall.router.store import Store


class Peers(Callbacks):
    """The scheduler, with its workers' and clients' membership, liveness and redelivery.

    Args:
        liveness: seconds of silence after which a worker is declared dead.
        max_worker_deaths: a task whose worker dies this many times while running it fails
            with ``WorkerLost`` instead of running again.
        blocked_after: seconds a worker's hub may be reported blocked before it gets no new
            tasks and those sent to it but not yet read are taken back.
        clock, limits: as for :class:`~squall.router.scheduler.Scheduler`.
    """

    def __init__(
        self,
        liveness: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        max_worker_deaths: int = 3,
        limits: Limits | None = None,
        blocked_after: float = 2.0,
        store: Store | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock, limits=limits, store=store, result_ttl=result_ttl, wall=wall)
        self.liveness = liveness
        self.blocked_after = blocked_after
        self.max_worker_deaths = max_worker_deaths
        #: a dead worker -> the tasks charged a death for it, until its node names the culprits
        self._charged: dict[bytes, list[Task]] = {}

    # -- peers ------------------------------------------------------------------------------

    def add_client(self, peer: bytes, pid: int, scope: str | None = None, group: str = "") -> None:
        """Register a client. ``scope``: who it uploads bodies as (its key's user id with
        authentication); by default the peer itself, so no two clients share bodies.
        ``group``: only workers of that group run its tasks."""
        self.clients[peer] = Client(peer, pid, self.clock(), scope or _peer_scope(peer), group)

    def add_worker(
        self,
        peer: bytes,
        pid: int,
        capacity: int,
        group: str = "",
        queues: Iterable[str] = (DEFAULT_QUEUE,),
        functions: Iterable[str] = (),
        host: str = "",
    ) -> None:
        """Register a worker; a known one saying HELLO again keeps what it runs (it only
        thought we had forgotten it) and updates its capacity. ``functions``: the names it
        serves."""
        capacity = min(capacity, self.limits.max_capacity)
        known = self.workers.get(peer)
        if known is not None and known.pid == pid:
            if capacity == 0 and known.capacity and not known.draining:
                self.monitor.worker_event("drained", known, self.wall(), self.clock())
            known.capacity = capacity
            known.last_seen = self.clock()
            return
        if known is not None:  # same address, new process: the old one died
            self.remove_worker(peer, died=True)
        now = self.clock()
        worker = self.workers[peer] = Worker(
            peer,
            pid,
            capacity,
            now,
            group=group,
            queues=frozenset(queues),
            functions=frozenset(functions),
            host=host,
            joined=now,
        )
        self.monitor.worker_event("joined", worker, self.wall(), now)

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
        self.monitor.worker_event("lost" if died else "drained", worker, self.wall(), self.clock())
        blamed = set(culprits)
        if died:
            self.counters["worker_deaths"] += 1
            if not blamed:  # remembered, in case its node names the culprits a moment later
                self._charged[peer] = list(worker.running.values())
                while len(self._charged) > MAX_CHARGED:
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
            if task.key:
                self.store.requeued(task.key)
        self.counters["redelivered"] += len(requeued) + len(isolated)
        self.monitor.redelivered(requeued + isolated, self.wall())
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

        Its running tasks are marked cancelled; :meth:`take_stops` hands over which workers
        must stop them (a paused stream would otherwise hold its slot forever). Its background
        tasks are the router's, not its own: they stay.
        """
        if peer == KEPT:
            return 0
        for worker in self.workers.values():
            for task in worker.running.values():
                if task.client == peer and not task.cancelled:
                    task.cancelled = True
                    self._stop_on_worker.setdefault(worker.peer, []).append(task.id)
        self.clients.pop(peer, None)
        self.monitor.unsubscribe(peer)
        dropped = sum(lane.drop_client(peer) for lane in self.lanes.values())
        self.suspects = collections.deque(t for t in self.suspects if t.client != peer)
        self.queued_by_client.pop(peer, None)
        for task in [t for t in self.tasks.values() if t.client == peer and t.worker is None]:
            self._forget(task)  # queued, or waiting for dependencies
        for key in [k for k in self.recent if k[0] == peer]:
            self.recent_bytes -= frames_size(self.recent.pop(key)[1])
        self.uploaded.pop(_peer_scope(peer), None)
        self.drop_watchers(peer)
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
        # (not KEPT, the router's own entry: the background tasks' owner never leaves)
        return [peer for peer, c in self.clients.items() if peer and c.last_seen < deadline]

    def forget_peer(self, peer: bytes) -> None:
        """Drop a peer's state as if it had died (cut off, or its id taken by another key)."""
        if peer in self.workers:
            self.remove_worker(peer)
        elif peer in self.clients:
            self.remove_client(peer)


def _peer_scope(peer: bytes) -> str:
    return "peer:" + peer.hex()
