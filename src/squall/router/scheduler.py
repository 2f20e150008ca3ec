"""The router's task book: what it holds, where each task is, and what runs where next.

:class:`Scheduler` owns the tasks from submit to outcome: the per-client fair queues (and one
per worker group), the suspects that run alone, dependencies between tasks, dispatch in
proportion to free capacity, completion, cancel and withdraw, stream items, the byte and count
limits, the function bodies and who uploaded them, and the counters ``stats()`` reports.

It speaks no protocol and makes no instructions: its methods take and return plain values
(tasks, ids, outcomes), and :class:`~squall.router.state.RouterState` turns them into sends.
Workers and clients joining, going silent and leaving (and what that does to their tasks) are
:class:`~squall.router.peers.Peers`' business, one layer up.

Tasks wait in *lanes*, one per (worker group, named queue), each ordered by priority
(:mod:`squall.router.lanes`); a worker is given tasks only from the queues it serves. A
delayed task waits in a heap of timers by its not-before time, and tasks with an expiry in
another by that time: releasing and expiring cost a heap pop each, and nothing per idle
second. Queues may be limited in starts per period and in tasks running at once, across all
workers (:mod:`squall.router.limits`).

Submit, dispatch and completion run once per task: they are kept to a few dict operations
each, with no search through queues or workers.
"""

from __future__ import annotations

import collections
import heapq
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from squall.protocol import (
    DEFAULT_QUEUE,
    KIND_JSON,
    FailureCode,
    Status,
    SubmitItem,
    failure_outcome,
    name_hash,
)
from squall.router.lanes import Lane
from squall.router.limits import Limiter
from squall.router.model import (
    BodyCache,
    Client,
    Limits,
    Published,
    Task,
    Worker,
    frames_size,
)
from squall.router.monitor import Monitor
from squall.router.policy import MAX_REFUSED_BODIES

#: what each worker-reported outcome counts as in ``stats()`` (a router-made failure, such as
#: a lost worker or a timeout, has a counter of its own)
_OUTCOME_COUNTERS: dict[int, str] = {
    Status.OK: "succeeded",
    Status.ERROR: "failed",
    Status.CANCELLED: "stopped",
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
    "retried",
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
    "enqueued",
    "attached",
    "not_found",
    "expired",
    "schedule_firings",
)

#: the lane of tasks any worker of the default queue may run
DEFAULT_LANE = ("", DEFAULT_QUEUE, "")


class Scheduler:
    """Tasks, queues, dispatch, completion, cancel and function bodies, for the peers known.

    Args:
        clock: monotonic time source (tests pass a fake one).
        limits: byte and count bounds on what the router holds.
        wall: the wall clock (Unix seconds), for delays and expiries given as times.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.wall = wall
        limits = limits or Limits()
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
        #: the peers known (:class:`~squall.router.peers.Peers` adds and removes them); here
        #: because dispatch and completion read them on every task
        self.workers: dict[bytes, Worker] = {}
        self.clients: dict[bytes, Client] = {}
        #: (worker group, queue) -> its waiting tasks, by priority, FIFO per client among
        #: equals, clients in turn; group "" is any worker's
        #: (worker group, queue, function name) -> the tasks waiting there
        self.lanes: dict[tuple[str, str, str], Lane[Task]] = {DEFAULT_LANE: Lane()}
        #: functions published to the router by value (``ex.publish``), by name
        self.published: dict[str, Published] = {}
        #: the default queue's lane, for any worker (always there)
        self.queue: Lane[Task] = self.lanes[DEFAULT_LANE]
        #: delayed tasks, as (not before, sequence, task): a min-heap by Unix time
        self.timers: list[tuple[float, int, Task]] = []
        #: tasks with an expiry, as (expires, sequence, task); started ones are skipped
        self.expiries: list[tuple[float, int, Task]] = []
        self._sequence = 0
        #: rate and concurrency limits of named queues, across all workers
        self.limiter = Limiter()
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
        #: worker -> running task ids to stop (cancelled, of a client gone, taken back)
        self._stop_on_worker: dict[bytes, list[int]] = {}
        #: recovered background tasks that were running when the router stopped: their
        #: workers may still report them (router task id -> task) before they run again
        self.limbo: dict[int, Task] = {}
        self.bodies = BodyCache()
        #: fn hash -> workers waiting for its body
        self.body_waiters: dict[bytes, set[bytes]] = {}
        # Task ids start at random: a worker still running tasks from before a router restart
        # must not report them under ids this router has given to other tasks.
        self._next_id = int.from_bytes(os.urandom(6), "big") << 8
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: the history, figures and event feed operators read (squall status, /metrics)
        self.monitor = Monitor()

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
        now = self.wall()
        accepted = []
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
                submitted_at=now,
            )
            if item.route is not None:
                self.route(task, *item.route)
            accepted.append(task)
            self.tasks[task.id] = task
            self.by_client[(client, item.task_id)] = task
            if item.deps:
                self._wire_dependencies(task, item.deps)
            if task.waiting == 0:
                self.ready(task)
            n += 1
        self.counters["submitted"] += n
        self.monitor.submitted(accepted)
        return n

    def route(
        self,
        task: Task,
        queue: str,
        priority: int,
        not_before: float,
        expires: float,
        function: str = "",
    ) -> None:
        """Give ``task`` its queue, priority, not-before and expiry times, and the function a
        call by name calls."""
        task.queue, task.priority, task.function = queue, priority, function
        task.not_before, task.expires = not_before, expires
        if expires:
            self._sequence += 1
            heapq.heappush(self.expiries, (expires, self._sequence, task))

    def ready(self, task: Task) -> None:
        """``task`` may run (its dependencies have outcomes): queue it, or hold it until its
        not-before time."""
        if task.not_before and task.not_before > self.wall():
            task.held = True
            # Held for long, maybe by the 100,000: plain bytes cost a fraction of a zmq.Frame.
            task.frames = [f.bytes if hasattr(f, "bytes") else f for f in task.frames]
            self._sequence += 1
            heapq.heappush(self.timers, (task.not_before, self._sequence, task))
        else:
            self._queue_of(task).append(task)

    def _release_due(self, now: float) -> None:
        """Delayed tasks whose time has come join their queues."""
        timers = self.timers
        while timers and timers[0][0] <= now:
            task = heapq.heappop(timers)[2]
            if not task.held or task.cancelled:
                continue  # cancelled or expired while held
            task.held = False
            self._queue_of(task).append(task)

    def _expire_due(self, now: float) -> None:
        """Tasks past their expiry that never started fail with TaskExpired, unrun."""
        expiries = self.expiries
        while expiries and expiries[0][0] <= now:
            task = heapq.heappop(expiries)[2]
            if (
                task.cancelled
                or task.worker is not None
                or task.attempt
                or task.id not in self.tasks
            ):
                continue  # done, cancelled, or started already: expiry is about starting
            task.cancelled = True  # skipped where it waits
            if task.held:
                task.held = False
            elif task.waiting == 0 and not task.suspect:
                self._queue_of(task).drop(task)
            task.frames = []
            self.queued_by_client[task.client] -= 1
            self.counters["expired"] += 1
            frames = failure_outcome(
                FailureCode.TASK_EXPIRED, "the task expired before any worker started it"
            )
            self._settle(task, Status.ERROR, frames)
            if not task.key and task.client in self.clients:
                self.decided.append((task.client, task.client_task_id, Status.ERROR, frames))

    def next_due(self) -> float:
        """When (monotonic) the next delayed task, expiry or rate-limited start is due; the
        socket loop wakes by then (inf: nothing is)."""
        due = math.inf
        if self.timers or self.expiries:
            at = min(
                self.timers[0][0] if self.timers else math.inf,
                self.expiries[0][0] if self.expiries else math.inf,
            )
            due = self.clock() + max(0.0, at - self.wall())
        if self.limiter:
            for (_, queue, _), lane in self.lanes.items():
                if lane and queue in self.limiter:
                    due = min(due, self.limiter.next_room(queue))
        return due

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
        function = item.route.function if item.route is not None else ""
        if function or item.kind & KIND_JSON:
            if not function or item.fn_hash != name_hash(function):
                return FailureCode.UNKNOWN_FUNCTION, (
                    "a call by name carries its name's hash, and only a call by name is JSON"
                )
        elif uploads is None or item.fn_hash not in uploads:
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
        if self.timers or self.expiries:
            now = self.wall()
            if self.timers and self.timers[0][0] <= now:
                self._release_due(now)
            if self.expiries and self.expiries[0][0] <= now:
                self._expire_due(now)
        if self.suspects:
            self._dispatch_suspects(plan)
        if len(self.lanes) == 1:  # only the default queue's lane: the common case
            if self.queue:
                serving = (w for w in self.workers.values() if DEFAULT_QUEUE in w.queues)
                self._spread(self.queue, serving, plan)
            return plan
        # A group's tasks first: they can run nowhere else.
        for key in sorted(self.lanes, key=lambda k: k[0] == ""):
            lane = self.lanes[key]
            if not lane:
                if key != DEFAULT_LANE:
                    del self.lanes[key]
                continue
            group, queue, function = key
            published = self.published.get(function) if function else None
            workers = [
                w
                for w in self.workers.values()
                if queue in w.queues
                and (not group or w.group == group)
                and (not function or published is not None or function in w.functions)
            ]
            if queue not in self.limiter:
                self._spread(lane, workers, plan)
                continue
            now = self.clock()
            room = self.limiter.allowance(queue, now, self._running_in(queue))
            if room:
                self.limiter.started(queue, self._spread(lane, workers, plan, room), now)
        return plan

    def _running_in(self, queue: str) -> int:
        """Tasks of ``queue`` running now (asked only for a queue with limits)."""
        return sum(1 for w in self.workers.values() for t in w.running.values() if t.queue == queue)

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
        queue: Lane[Task],
        workers: Iterable[Worker],
        plan: list[tuple[Worker, list[Task]]],
        most: float = math.inf,
    ) -> int:
        """Hand queued tasks (at most ``most``) to ``workers`` with free slots, in proportion
        to their room; return how many."""
        ready = sorted((w for w in workers if w.free > 0), key=lambda w: -w.free)
        total_free = sum(w.free for w in ready)
        n = int(min(len(queue), total_free, most))
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
        return n - left

    def _queue_of(self, task: Task) -> Lane[Task]:
        key = (task.group, task.queue, task.function)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane()
        return lane

    def _assign(self, worker: Worker, tasks: list[Task]) -> None:
        self.monitor.started(tasks, worker, self.wall())
        for task in tasks:
            task.worker = worker.peer
            if task.function and task.function in self.published:
                # Run the version published now (any worker can: it gets the body by hash).
                task.fn_hash = self.published[task.function].fn_hash
            worker.running[task.id] = task
            self.queued_by_client[task.client] -= 1
            if task.key:
                self.kept_started(task)
        self.counters["dispatched"] += len(tasks)

    def kept_started(self, task: Task) -> None:
        """A background task went to a worker (recorded by the background layer)."""

    def kept_body(self, fn_hash: bytes) -> bytes | None:
        """The body of a background task's function, kept with it (background layer)."""
        return None

    def kept_settled(self, task: Task, status: int, frames: list[Any]) -> None:
        """A background task has its outcome (kept and handed to its watchers by the
        background layer)."""

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
        if task is None and worker is not None:
            # A background task that was running when the router stopped, reported by its
            # worker after the restart: its outcome counts, and it does not run again.
            task = self.limbo.pop(task_id, None)
        if task is None:
            self.counters["stale_results"] += 1
            return None
        if worker is not None:
            worker.done += 1
            if worker.isolating == task_id:
                worker.isolating = None
        self.counters["completed"] += 1
        self.counters[_OUTCOME_COUNTERS.get(status, "failed")] += 1
        self._settle(task, status, frames or [], worker.pid if worker is not None else 0)
        if (
            task.key
            or task.client not in self.clients
            or task.cancelled
            or status == Status.CANCELLED
        ):
            return None  # a background task's watchers have it already (kept_settled)
        return task

    def _settle(self, task: Task, status: int, frames: list[Any], worker_pid: int = -1) -> None:
        """Forget a finished task; hand its outcome to the tasks waiting for it. The monitor
        records it (``worker_pid``: the worker that ran it, -1 to look it up).

        On the path of every outcome and every cancel: kept to a few dict operations.
        """
        if worker_pid < 0:
            worker = self.workers.get(task.worker) if task.worker is not None else None
            worker_pid = worker.pid if worker is not None else 0
        self.monitor.finished(task, status, frames, worker_pid, self.wall())
        if task.key:
            self.kept_settled(task, status, frames)
            return
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
                    self.ready(dependent)

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
        if not task.key and task.client in self.clients and not task.cancelled:
            self.decided.append((task.client, task.client_task_id, Status.ERROR, frames))

    def take_stops(self) -> dict[bytes, list[int]]:
        """Running tasks to stop, per live worker (cancelled, of departed clients, taken back
        from a blocked hub); ``RouterState.take_sends`` turns them into CANCELs."""
        stops, self._stop_on_worker = self._stop_on_worker, {}
        return {w: ids for w, ids in stops.items() if w in self.workers}

    def take_decided(self) -> list[tuple[bytes, int, int, list[Any]]]:
        """Outcomes the router made itself; ``RouterState.take_sends`` adds them to the RESULTs."""
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
                if task.waiting == 0 and not task.suspect and not task.held:
                    self._queue_of(task).drop(task)
                task.frames = []  # its arguments are freed now, not when its turn comes
                self.queued_by_client[client] -= 1
                self._settle(task, Status.CANCELLED, [])  # its dependents learn it will not run
        return stop

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

    # -- function bodies --------------------------------------------------------------------

    def body_for(self, worker_peer: bytes, fn_hash: bytes) -> tuple[bytes | None, bytes | None]:
        """A worker misses a function body: return ``(body, None)`` when the cache has it,
        else ``(None, client)`` naming a client to ask (``(None, None)`` if none can answer).
        """
        body = self.bodies.get(fn_hash) or self.kept_body(fn_hash) or self.published_body(fn_hash)
        if body is not None:
            self.counters["bodies_sent"] += 1
            return body, None
        worker = self.workers.get(worker_peer)
        owner = None
        if worker is not None:
            owner = next(
                (t.client for t in worker.running.values() if t.fn_hash == fn_hash and not t.key),
                None,
            )
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
        if len(self.refused_bodies) > MAX_REFUSED_BODIES:
            self.refused_bodies.popitem(last=False)

    # -- reporting --------------------------------------------------------------------------

    def queue_stats(self) -> dict[str, dict[str, Any]]:
        """Per named queue: tasks waiting, running, held for later, the workers serving it,
        and its limits."""
        queues: dict[str, dict[str, Any]] = {}

        def entry(name: str) -> dict[str, Any]:
            if name not in queues:
                queues[name] = {"queued": 0, "running": 0, "scheduled": 0, "workers": 0}
            return queues[name]

        for (_, name, _), lane in self.lanes.items():
            entry(name)["queued"] += len(lane)
        for worker in self.workers.values():
            for name in worker.queues:
                entry(name)["workers"] += 1
            for task in worker.running.values():
                entry(task.queue)["running"] += 1
        for _, _, task in self.timers:
            if task.held and not task.cancelled:
                entry(task.queue)["scheduled"] += 1
        for name, limit in self.limiter.limits.items():
            entry(name)["limit"] = limit.describe()
        return queues

    def published_body(self, fn_hash: bytes) -> bytes | None:
        """The body of a published function's version, by its hash."""
        for published in self.published.values():
            if published.fn_hash == fn_hash:
                return published.body
        return None

    def function_stats(self) -> dict[str, dict[str, Any]]:
        """Per function called by name: calls waiting, running, the workers serving it, and
        its published version (0: none). A name nobody serves shows its calls waiting."""
        named: dict[str, dict[str, Any]] = {}

        def entry(name: str) -> dict[str, Any]:
            if name not in named:
                named[name] = {"queued": 0, "running": 0, "workers": 0, "version": 0}
            return named[name]

        for (_, _, name), lane in self.lanes.items():
            if name:
                entry(name)["queued"] += len(lane)
        for worker in self.workers.values():
            for name in worker.functions:
                entry(name)["workers"] += 1
            for task in worker.running.values():
                if task.function:
                    entry(task.function)["running"] += 1
        for name, published in self.published.items():
            entry(name)["version"] = published.version
        return named

    def stats(self) -> dict[str, Any]:
        return {
            "workers": len(self.workers),
            "worker_pids": sorted(w.pid for w in self.workers.values()),
            "capacity": sum(w.capacity for w in self.workers.values()),
            "clients": sum(1 for peer in self.clients if peer),  # not the router's own
            "queued": sum(not t.cancelled for t in self.suspects)
            + sum(len(lane) for lane in self.lanes.values()),
            "scheduled": sum(t.held and not t.cancelled for _, _, t in self.timers),
            "queues": self.queue_stats(),
            "functions": self.function_stats(),
            "running": sum(len(w.running) for w in self.workers.values()),
            "bodies_cached": len(self.bodies),
            "held_bytes": self.held_bytes,
            "recent_bytes": self.recent_bytes,
            **self.counters,
        }
