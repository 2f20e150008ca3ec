"""What the router saw: recent tasks, events for subscribers, and the figures operators read.

:class:`Monitor` is fed by the scheduler at each state change of a task (submitted, started,
finished, redelivered) and of a worker (joined, lost, drained). From that alone it answers
``squall status``, ``squall inspect``, the dashboard's task pages and ``/metrics``: a bounded
history of finished tasks (``--history``), counters by queue, function and outcome, histograms
of run time and of the wait from queued to started (schedule-to-start latency), and rates.
A failed task's error type and message are read from its outcome's JSON summary, which the
worker writes beside the pickled exception: nothing here unpickles.

Costs are kept off the hot path: per task, a few attribute stores and one tuple at its end;
events are built only while a client subscribes (``ex.events()``), and leave in one EVENTS
message per pass of the socket loop. No sockets and no clocks of its own: times come in as
arguments, so tests drive it with a fake clock.
"""

from __future__ import annotations

import bisect
import collections
import math
import operator
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from squall import ids
from squall.errors import ProtocolError
from squall.protocol import (
    EVENT_CODES,
    EventEntry,
    FailureCode,
    Status,
    read_error_summary,
)
from squall.router.model import Task, Worker

#: finished tasks remembered by default (``squall router --history``)
DEFAULT_HISTORY = 100_000
#: failed tasks whose traceback text is remembered (the newest; tracebacks are big)
TRACEBACKS_KEPT = 2_000
#: bytes of one traceback kept
TRACEBACK_SIZE = 8_000
#: function names remembered, by function body hash
NAMES_KEPT = 65_536
#: events held for subscribers before the oldest are dropped (a subscriber that cannot keep
#: up loses events, never the router its memory); the next batch says how many were lost
EVENTS_HELD = 200_000
#: most tasks one ``tasks`` query returns
MAX_PAGE = 1_000
#: seconds over which rates are measured
RATE_WINDOW = 10.0

#: upper bounds of the histograms' buckets, in seconds (Prometheus ``le``)
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    math.inf,
)

_SUBMITTED = EVENT_CODES["task.submitted"]
_STARTED = EVENT_CODES["task.started"]
_RETRIED = EVENT_CODES["task.retried"]
_REDELIVERED = EVENT_CODES["task.redelivered"]
_LOST = EVENT_CODES["events.lost"]

#: the states a task can end in
FINISHED_STATES = ("succeeded", "failed", "cancelled", "expired")
#: every state a task query can ask for
STATES = ("scheduled", "waiting", "queued", "running", *FINISHED_STATES)


def task_text_id(task_id: int, key: bytes = b"") -> str:
    """A task's id as people and the API see it: a background task's 26-character id, or
    for a task tied to its client, the router's number for it in 16 hex digits."""
    return ids.to_text(key) if key else f"{task_id:016x}"


def parse_task_id(text: str) -> tuple[int, bytes]:
    """``(router number, b"")`` or ``(0, background id)`` for an id's text form.

    Raises:
        ValueError: ``text`` is neither form, named in the message.
    """
    if len(text) == 16:
        try:
            return int(text, 16), b""
        except ValueError:
            pass
    try:
        return 0, ids.from_text(text)
    except ValueError:
        raise ValueError(
            f"{text!r:.40} is not a squall task id (16 hex digits, or 26 characters of a "
            "background task's id)"
        ) from None


class Histogram:
    """Counts of observations per bucket of :data:`BUCKETS`, their sum and count."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[_bisect(BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """An upper bound of the ``q`` quantile (the bucket it falls in); None when empty."""
        if not self.count:
            return None
        rank, seen = q * self.count, 0
        for bound, n in zip(BUCKETS, self.counts, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return math.inf

    def describe(self) -> dict[str, Any]:
        """Cumulative counts per upper bound (as Prometheus exposes them), sum and count."""
        cumulative, total = [], 0
        for bound, n in zip(BUCKETS, self.counts, strict=True):
            total += n
            cumulative.append(["+Inf" if math.isinf(bound) else bound, total])
        return {"buckets": cumulative, "sum": self.sum, "count": self.count}


def _observe_all(hist: Histogram, values: list[float]) -> None:
    """:meth:`Histogram.observe` for many values at once (negative ones, from a clock
    step, count as 0)."""
    counts, total = hist.counts, 0.0
    for value in values:
        counts[_bisect(BUCKETS, value)] += 1
        if value > 0:
            total += value
    hist.sum += total
    hist.count += len(values)


#: the (queue, function, state) of a history record
_OUTCOME_KEY = operator.itemgetter(3, 2, 4)


class TaskRecord(NamedTuple):
    """A finished task, as the history keeps it (no payload, no outcome)."""

    task_id: int
    key: bytes
    name: str
    queue: str
    state: str
    submitted: float
    started: float  # 0: it never started
    finished: float
    worker_pid: int  # 0: no worker ran it
    attempts: int
    error_type: str
    error_message: str

    def describe(self) -> dict[str, Any]:
        return {
            "id": task_text_id(self.task_id, self.key),
            "background": bool(self.key),
            "name": self.name,
            "queue": self.queue,
            "state": self.state,
            "submitted": self.submitted,
            "started": self.started or None,
            "finished": self.finished,
            "runtime": (self.finished - self.started) if self.started else None,
            "worker_pid": self.worker_pid or None,
            "attempts": self.attempts,
            "error_type": self.error_type or None,
            "error_message": self.error_message or None,
        }


#: plain ints: an enum member's lookup costs more than the rest of a comparison
_OK = int(Status.OK)
_CANCELLED = int(Status.CANCELLED)
_bisect = bisect.bisect_left


def _outcome(status: int, frames: list[Any]) -> tuple[str, str, str, str]:
    """(state, error type, error message, traceback) of an outcome, from its summary."""
    if status == _OK:
        return "succeeded", "", "", ""
    if status == _CANCELLED or not frames:
        return "cancelled", "", "", ""
    try:
        summary = read_error_summary(frames[0])
    except ProtocolError:
        return "failed", "squall.TaskFailed", "the outcome's summary could not be read", ""
    if summary.code == FailureCode.CANCELLED:
        return "cancelled", summary.type, summary.message, ""
    state = "expired" if summary.code == FailureCode.TASK_EXPIRED else "failed"
    return state, summary.type, summary.message, summary.traceback[-TRACEBACK_SIZE:]


class Monitor:
    """The history, counters, histograms and event feed of one router.

    Args:
        history: finished tasks remembered (the oldest go first); 0 keeps none.
    """

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        #: finished tasks, oldest first, as the tuples a TaskRecord is made of
        self.history: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=max(0, history))
        #: function body hash -> the name its client gave it (FN_BODY)
        self.names: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        #: (queue, function, outcome) -> tasks that ended so
        self.outcomes: dict[tuple[str, str, str], int] = {}
        #: per queue: seconds run by each task that ran, and waited from queued to started
        self.runtime: dict[str, Histogram] = {}
        self.wait: dict[str, Histogram] = {}
        #: per queue: tasks that came in since the start (those that ended: ``outcomes``)
        self.arrived: dict[str, int] = {}
        #: per queue: attempts that failed and ran again on their worker (``retries``)
        self.retries: dict[str, int] = {}
        #: (queue, start time, when each task's wait began) of dispatches not yet counted in
        #: ``wait``
        self._waits: list[tuple[str, float, list[float]]] = []
        #: records of finished tasks not yet counted in ``outcomes`` and ``runtime``
        self._unaggregated: list[tuple[Any, ...]] = []
        #: (time, arrived, ended) snapshots, for rates over RATE_WINDOW
        self._samples: collections.deque[tuple[float, dict[str, int], dict[str, int]]] = (
            collections.deque()
        )
        #: router task id -> traceback text of the newest failures
        self.tracebacks: collections.OrderedDict[int, str] = collections.OrderedDict()
        #: subscribed client -> the event types it wants (None: all)
        self.subscribers: dict[bytes, frozenset[str] | None] = {}
        self.pending: list[EventEntry] = []
        self.events_lost = 0
        #: workers by pid as they last were, for lost and drained ones still shown a while
        self.gone_workers: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()

    # -- names --------------------------------------------------------------------------------

    def name_function(self, fn_hash: bytes, name: str) -> None:
        """A client named the function of ``fn_hash`` (its qualified name)."""
        if not name:
            return
        names = self.names
        names[fn_hash] = name
        names.move_to_end(fn_hash)
        if len(names) > NAMES_KEPT:
            names.popitem(last=False)

    def name_of(self, task: Task) -> str:
        return task.function or self.names.get(task.fn_hash, "")

    # -- task transitions (called by the scheduler) -------------------------------------------

    def submitted(self, tasks: Iterable[Task]) -> None:
        """Tasks came in (queued, delayed, or waiting for dependencies)."""
        arrived = self.arrived
        for task in tasks:
            queue = task.queue
            arrived[queue] = arrived.get(queue, 0) + 1
        if self.subscribers:
            self._task_events(_SUBMITTED, tasks)

    def started(self, tasks: list[Task], worker: Worker, now: float) -> None:
        """Tasks of one lane (so of one queue) went to ``worker`` at wall time ``now``.

        Per task only its start time and when its wait began (its not-before time, for a
        delayed one); the wait histogram counts them at the next :meth:`aggregate`.
        """
        for task in tasks:
            task.started_at = now
        if tasks:
            began = [
                t.not_before if t.not_before > t.submitted_at else t.submitted_at for t in tasks
            ]
            self._waits.append((tasks[0].queue, now, began))
        if self.subscribers:
            self._task_events(_STARTED, tasks, now, worker.pid)

    def finished(
        self, task: Task, status: int, frames: list[Any], worker_pid: int, now: float
    ) -> None:
        """``task`` has its outcome (or was cancelled, or expired) at wall time ``now``.

        On the path of every outcome: one tuple, kept twice (an error's summary is read only
        for failures).
        """
        if status == _OK:
            state, error_type, message = "succeeded", "", ""
        else:
            state, error_type, message, traceback = _outcome(status, frames)
            message = message[:1000]
            if traceback:
                self.tracebacks[task.id] = traceback
                if len(self.tracebacks) > TRACEBACKS_KEPT:
                    self.tracebacks.popitem(last=False)
        queue = task.queue
        name = task.function or self.names.get(task.fn_hash, "")
        started = task.started_at
        # A plain tuple (a TaskRecord costs more to make than all the rest of this); the
        # counters and the run-time histogram are brought up to date from these records in
        # batches (:meth:`aggregate`), off the path of each outcome.
        record = (
            task.id,
            task.key,
            name,
            queue,
            state,
            task.submitted_at,
            started,
            now,
            worker_pid,
            (task.attempt + 1 if started else task.attempt) + task.retries,
            error_type,
            message,
        )
        self.history.append(record)
        self._unaggregated.append(record)
        if self.subscribers:
            runtime = now - started if started else None
            code = EVENT_CODES["task." + state]
            self._task_event(code, task, now, worker_pid, runtime, error_type, message)

    def aggregate(self) -> None:
        """Count the tasks recorded since the last call: waits, outcomes by (queue, function,
        state) and run times per queue. Called every heartbeat and before any figure is read;
        off the path of each task, where it would cost every task a few microseconds."""
        waits, self._waits = self._waits, []
        for queue, started, began in waits:
            _observe_all(self._histogram(self.wait, queue), [started - b for b in began])
        pending, self._unaggregated = self._unaggregated, []
        if not pending:
            return
        outcomes = self.outcomes
        for key, n in collections.Counter(map(_OUTCOME_KEY, pending)).items():
            outcomes[key] = outcomes.get(key, 0) + n
        queues = {record[3] for record in pending}
        for queue in queues:
            ran = [r[7] - r[6] for r in pending if r[6] and (len(queues) == 1 or r[3] == queue)]
            if ran:
                _observe_all(self._histogram(self.runtime, queue), ran)

    @staticmethod
    def _histogram(histograms: dict[str, Histogram], queue: str) -> Histogram:
        hist = histograms.get(queue)
        if hist is None:
            hist = histograms[queue] = Histogram()
        return hist

    def retried(self, task: Task, retry: Any, now: float) -> None:
        """A worker runs ``task`` again after its attempt ``retry.attempt`` failed."""
        queue = task.queue
        self.retries[queue] = self.retries.get(queue, 0) + 1
        if self.subscribers:
            message = retry.error_message[:1000]
            worker = 0  # (the task's worker: its event says which below)
            self._task_event(
                _RETRIED, task, now, worker, None, retry.error_type, message, retry.attempt
            )

    def redelivered(self, tasks: Iterable[Task], now: float) -> None:
        """Tasks whose worker was lost (or handed them back) queue again."""
        for task in tasks:
            task.started_at = 0.0
        if self.subscribers:
            self._task_events(_REDELIVERED, tasks, now)

    # -- workers ------------------------------------------------------------------------------

    def worker_event(self, kind: str, worker: Worker, now: float, monotonic: float) -> None:
        """A worker joined, was lost, or drained (``kind``: "joined", "lost", "drained") at
        wall time ``now`` (``monotonic``: the same instant on the monotonic clock)."""
        if kind != "joined":
            gone = describe_worker(worker, monotonic)
            self.gone_workers[worker.pid] = {**gone, "state": kind, "since": now}
            self.gone_workers.move_to_end(worker.pid)
            while len(self.gone_workers) > 100:
                self.gone_workers.popitem(last=False)
        else:
            self.gone_workers.pop(worker.pid, None)
        if self.subscribers:
            code = EVENT_CODES["worker." + kind]
            queues = tuple(sorted(worker.queues))
            self._emit((code, now, worker.pid, worker.host, queues, worker.capacity))

    # -- events -------------------------------------------------------------------------------

    def subscribe(self, peer: bytes, types: Iterable[str] | None = None) -> None:
        self.subscribers[peer] = frozenset(types) if types is not None else None

    def unsubscribe(self, peer: bytes) -> None:
        self.subscribers.pop(peer, None)
        if not self.subscribers:
            self.pending.clear()

    def _task_event(
        self,
        code: int,
        task: Task,
        now: float,
        worker: int = 0,
        runtime: float | None = None,
        error_type: str = "",
        message: str = "",
        failed_attempt: int = 0,
    ) -> None:
        """Queue one task event (see ``protocol.EventEntry``): a tuple now, JSON only when
        the batch leaves (``protocol.encode_events``)."""
        self._emit(
            (
                code,
                now,
                ids.to_text(task.key) if task.key else task.id,
                task.function or self.names.get(task.fn_hash, ""),
                task.queue,
                task.attempt + 1 + task.retries,
                worker,
                runtime,
                error_type,
                message,
                failed_attempt,
            )
        )

    def _task_events(
        self, code: int, tasks: Iterable[Task], now: float | None = None, worker: int = 0
    ) -> None:
        """Queue one event per task of a batch (submitted, dispatched, redelivered): one
        entry per group of them sharing name, queue, attempt and time, their ids in a list
        (``now`` None: each task's submit time)."""
        names = self.names
        groups: dict[tuple[str, str, int, float], list[Any]] = {}
        for task in tasks:
            key = (
                task.function or names.get(task.fn_hash, ""),
                task.queue,
                task.attempt + 1 + task.retries,
                task.submitted_at if now is None else now,
            )
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(ids.to_text(task.key) if task.key else task.id)
        for (name, queue, attempt, t), task_ids in groups.items():
            self._emit((code, t, task_ids, name, queue, attempt, worker, None, "", "", 0))

    def _emit(self, entry: EventEntry) -> None:
        pending = self.pending
        pending.append(entry)
        if len(pending) > EVENTS_HELD:
            drop = len(pending) - EVENTS_HELD
            del pending[:drop]
            self.events_lost += drop

    def take_events(self) -> list[tuple[list[bytes], list[EventEntry]]]:
        """The events gathered since the last call, grouped by the subscribers that want
        them: ``[(peers, entries)]``."""
        if not self.pending:
            return []
        events, self.pending = self.pending, []
        if self.events_lost:
            events.insert(0, (_LOST, events[0][1], self.events_lost))
            self.events_lost = 0
        everyone = [p for p, kinds in self.subscribers.items() if kinds is None]
        batches = [(everyone, events)] if everyone else []
        for peer, kinds in self.subscribers.items():
            if kinds is not None:
                codes = {EVENT_CODES[k] for k in kinds if k in EVENT_CODES} | {_LOST}
                mine = [e for e in events if e[0] in codes]
                if mine:
                    batches.append(([peer], mine))
        return batches

    # -- rates --------------------------------------------------------------------------------

    def sample(self, now: float) -> None:
        """Remember the counters now (each heartbeat), for rates over RATE_WINDOW."""
        self.aggregate()
        samples = self._samples
        samples.append((now, dict(self.arrived), self.ended()))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()

    def ended(self) -> dict[str, int]:
        """Per queue: tasks that ended, since the start."""
        self.aggregate()
        ended: dict[str, int] = {}
        for (queue, _, _), n in self.outcomes.items():
            ended[queue] = ended.get(queue, 0) + n
        return ended

    def rates(self, now: float) -> dict[str, tuple[float, float]]:
        """Per queue: tasks per second in and out over the last RATE_WINDOW seconds."""
        if not self._samples:
            return {}
        then, arrived_then, ended_then = self._samples[0]
        span = max(now - then, 1e-9)
        arrived, ended = self.arrived, self.ended()
        return {
            q: (
                (arrived.get(q, 0) - arrived_then.get(q, 0)) / span,
                (ended.get(q, 0) - ended_then.get(q, 0)) / span,
            )
            for q in set(arrived) | set(ended)
        }

    # -- queries ------------------------------------------------------------------------------

    def find(self, task_id: int = 0, key: bytes = b"") -> TaskRecord | None:
        """A finished task of the history by router number or background id (newest first:
        the likeliest)."""
        for record in reversed(self.history):
            if (record[1] == key) if key else (record[0] == task_id):
                return TaskRecord._make(record)
        return None

    def finished_matching(
        self,
        states: frozenset[str] | None,
        name: str | None,
        queue: str | None,
        since: float | None,
        until: float | None,
    ) -> Iterator[TaskRecord]:
        """Finished tasks of the history, newest first, that match every filter given."""
        for raw in reversed(self.history):
            record = TaskRecord._make(raw)
            if until is not None and record.finished > until:
                continue
            if since is not None and record.finished < since:
                break  # older still from here on
            if states is not None and record.state not in states:
                continue
            if name is not None and name not in record.name:
                continue
            if queue is not None and record.queue != queue:
                continue
            yield record

    def recent_failures(self, n: int = 10) -> list[dict[str, Any]]:
        failed = frozenset(("failed", "expired"))
        found = []
        for record in self.finished_matching(failed, None, None, None, None):
            found.append(record.describe())
            if len(found) >= n:
                break
        return found


def describe_worker(worker: Worker, now: float) -> dict[str, Any]:
    """One worker as ``squall status`` and the dashboard show it (``now``: monotonic)."""
    return {
        "pid": worker.pid,
        "host": worker.host,
        "state": "draining" if worker.draining else ("blocked" if worker.blocked else "up"),
        "queues": sorted(worker.queues),
        "functions": sorted(worker.functions),
        "group": worker.group or None,
        "capacity": worker.capacity,
        "running": len(worker.running),
        "done": worker.done,
        "rss": worker.rss or None,
        "last_heartbeat_age": max(0.0, now - worker.last_seen),
        "up_for": max(0.0, now - worker.joined),
    }
