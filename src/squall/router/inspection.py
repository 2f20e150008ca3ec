"""What operators ask the router, and the few things they may do: the QUERY ops behind
``squall status``, ``squall inspect``, ``ex.events()``, the dashboard and ``/metrics``.

:class:`Inspection` adds them to :class:`~squall.router.peers.Peers`; what it answers comes
from the scheduler's live tasks and workers and from its :class:`~squall.router.monitor.Monitor`
(history, counters, histograms). Every answer is JSON built from what the router holds as
plain data: no payload is looked into.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from squall import ids
from squall.protocol import FailureCode, Status, SubmitItem, failure_outcome
from squall.router.model import Task
from squall.router.monitor import (
    FINISHED_STATES,
    MAX_PAGE,
    STATES,
    describe_worker,
    parse_task_id,
    task_text_id,
)
from squall.router.peers import Peers

#: the QUERY ops this layer answers
INSPECTION_OPS = frozenset(
    ("subscribe", "unsubscribe", "status", "tasks", "task", "metrics", "drain", "retry")
)


class Inspection(Peers):
    """Status, task queries, metrics, event subscriptions, and the operator's actions
    (cancel by id, retry a failed background task, drain a worker)."""

    #: the router process's own figures (pid, rss, cpu...), set by the socket loop
    process_info: Callable[[], dict[str, Any]] = staticmethod(dict)

    def inspection_op(self, peer: bytes, query: dict[str, Any]) -> Any:
        """Answer one of :data:`INSPECTION_OPS`; a bad request is answered with ``{"error":
        one line}``, never raised (the peer did nothing malformed at the protocol level)."""
        op = query["op"]
        self.monitor.aggregate()  # every figure counts every task that ended so far
        try:
            if op == "subscribe":
                types = query.get("types")
                if types is not None and not (
                    isinstance(types, list) and all(isinstance(t, str) for t in types)
                ):
                    raise ValueError("types is a list of event type names, or null for all")
                self.monitor.subscribe(peer, types)
                return {"subscribed": True}
            if op == "unsubscribe":
                self.monitor.unsubscribe(peer)
                return {"subscribed": False}
            if op == "status":
                return self.status()
            if op == "tasks":
                return self.find_tasks(query)
            if op == "task":
                return self.task_record(_text(query, "id"))
            if op == "metrics":
                return self.metrics()
            if op == "drain":
                return self.drain(_number(query, "pid"))
            return self.retry(_text(query, "id"))
        except ValueError as exc:
            return {"error": str(exc)[:300]}

    def forget_subscriber(self, peer: bytes) -> None:
        self.monitor.unsubscribe(peer)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Workers, queues (with rates and the oldest waiting age), totals, recent failures."""
        now, wall = self.clock(), self.wall()
        rates = self.monitor.rates(now)
        queues = self.queue_stats()
        oldest = self._oldest_waiting(wall)
        for name, entry in queues.items():
            rate_in, rate_out = rates.get(name, (0.0, 0.0))
            entry["rate_in"], entry["rate_out"] = rate_in, rate_out
            entry["oldest_wait"] = oldest.get(name)
        for name in rates:
            queues.setdefault(
                name,
                {
                    "queued": 0,
                    "running": 0,
                    "scheduled": 0,
                    "workers": 0,
                    "rate_in": rates[name][0],
                    "rate_out": rates[name][1],
                    "oldest_wait": None,
                },
            )
        workers = [describe_worker(w, now) for w in self.workers.values()]
        live = {w["pid"] for w in workers}
        gone = [w for pid, w in self.monitor.gone_workers.items() if pid not in live]
        return {
            "time": wall,
            "router": self.process_info(),
            "workers": sorted(workers, key=lambda w: (w["host"], w["pid"])),
            "gone_workers": gone[::-1],
            "queues": queues,
            "totals": {**self.stats(), **self.kept_stats()},
            "rates": {
                "in": sum(r[0] for r in rates.values()),
                "out": sum(r[1] for r in rates.values()),
            },
            "outcomes": self._outcome_totals(),
            "recent_failures": self.monitor.recent_failures(),
            "history": {"kept": len(self.monitor.history), "max": self.monitor.history.maxlen},
        }

    def _oldest_waiting(self, wall: float) -> dict[str, float]:
        """Per queue: seconds the longest-waiting ready task has waited."""
        oldest: dict[str, float] = {}
        for (_, queue, _), lane in self.lanes.items():
            for task in lane:
                since = max(task.submitted_at, task.not_before)
                if since and (queue not in oldest or since < oldest[queue]):
                    oldest[queue] = since
        return {q: max(0.0, wall - t) for q, t in oldest.items()}

    def _outcome_totals(self) -> dict[str, int]:
        totals = dict.fromkeys(FINISHED_STATES, 0)
        for (_, _, state), n in self.monitor.outcomes.items():
            totals[state] = totals.get(state, 0) + n
        return totals

    # -- tasks --------------------------------------------------------------------------------

    def live_state(self, task: Task) -> str:
        if task.worker is not None or task.id in self.limbo:
            return "running"
        if task.held:
            return "scheduled"
        if task.waiting:
            return "waiting"
        return "queued"

    def describe_live(self, task: Task) -> dict[str, Any]:
        worker = self.workers.get(task.worker) if task.worker is not None else None
        return {
            "id": task_text_id(task.id, task.key),
            "background": bool(task.key),
            "name": self.monitor.name_of(task),
            "queue": task.queue,
            "priority": task.priority,
            "state": self.live_state(task),
            "submitted": task.submitted_at or None,
            "started": task.started_at or None,
            "finished": None,
            "not_before": task.not_before or None,
            "expires": task.expires or None,
            "worker_pid": worker.pid if worker is not None else None,
            "attempts": task.attempt + (1 if task.worker is not None else 0),
        }

    def find_tasks(self, query: dict[str, Any]) -> dict[str, Any]:
        """Tasks newest first, by ``state`` (one or a list), ``name`` (a part of it),
        ``queue``, and time (``since``/``until``, Unix seconds: submitted, for live tasks;
        finished, for the rest); ``limit`` per page and ``offset`` for the next ones."""
        states = query.get("state")
        if isinstance(states, str):
            states = [states]
        if states is not None:
            if not isinstance(states, list) or not all(s in STATES for s in states):
                raise ValueError(f"state is one or a list of {', '.join(STATES)}")
            wanted: frozenset[str] | None = frozenset(states)
        else:
            wanted = None
        name = _optional_text(query, "name")
        queue = _optional_text(query, "queue")
        since = _optional_number(query, "since")
        until = _optional_number(query, "until")
        limit = int(min(MAX_PAGE, max(1, _optional_number(query, "limit") or 50)))
        offset = int(max(0, _optional_number(query, "offset") or 0))

        def live() -> Iterator[dict[str, Any]]:
            for task in sorted(self.tasks.values(), key=lambda t: -t.id):
                if task.cancelled:
                    continue
                if queue is not None and task.queue != queue:
                    continue
                if since is not None and task.submitted_at < since:
                    continue
                if until is not None and task.submitted_at > until:
                    continue
                if name is not None and name not in self.monitor.name_of(task):
                    continue
                described = self.describe_live(task)
                if wanted is None or described["state"] in wanted:
                    yield described

        def finished() -> Iterator[dict[str, Any]]:
            finished_states = wanted & set(FINISHED_STATES) if wanted is not None else None
            if finished_states is not None and not finished_states:
                return
            for record in self.monitor.finished_matching(
                finished_states, name, queue, since, until
            ):
                yield record.describe()

        page, seen = [], 0
        more = False
        for source in (live, finished):
            for entry in source():
                if seen >= offset + limit:
                    more = True
                    break
                if seen >= offset:
                    page.append(entry)
                seen += 1
            if more:
                break
        return {"tasks": page, "offset": offset, "next": offset + limit if more else None}

    def task_record(self, text: str) -> dict[str, Any]:
        """One task's whole record: live, in the history, or (background) in the store."""
        task_id, key = parse_task_id(text)
        task = self.kept.get(key) if key else self.tasks.get(task_id)
        if task is not None:
            record = self.describe_live(task)
        else:
            found = self.monitor.find(task_id, key)
            if found is None and not key:
                raise ValueError(f"no task {text} (finished too long ago, or never known)")
            record = found.describe() if found is not None else {"id": text}
            if found is not None:
                record["traceback"] = self.monitor.tracebacks.get(found.task_id)
        if key:
            kept = self.task_info(key)
            if "error" in kept and len(record) == 1:
                raise ValueError(f"no task {text} ({kept['error']})")
            for field in ("submitted", "started", "finished", "attempts", "error_type"):
                if record.get(field) is None and kept.get(field) is not None:
                    record[field] = kept[field]
            if record.get("state") is None:
                record["state"] = kept.get("state")
            if record.get("name") in (None, ""):
                record["name"] = kept.get("function")
            record["error_message"] = record.get("error_message") or kept.get("error_message")
            record["reason"] = kept.get("reason")
        record["timeline"] = [
            [event, record[field]]
            for event, field in (
                ("submitted", "submitted"),
                ("started", "started"),
                (record.get("state") or "finished", "finished"),
            )
            if record.get(field)
        ]
        return record

    # -- actions ------------------------------------------------------------------------------

    def may_cancel(self, peer: bytes, text: str) -> bool:
        """Whether a client that is no operator may cancel task ``text``: a background task
        (anyone who knows its id may), or a task of its own."""
        task_id, key = parse_task_id(text)
        if key:
            return True
        task = self.tasks.get(task_id)
        return task is None or task.client == peer

    def cancel_by_id(self, text: str) -> tuple[bool, dict[bytes, list[int]]]:
        """Cancel a task named by its id (an operator's cancel): a background one as its
        watchers would; one tied to its client also tells that client (its future raises
        ``Cancelled``). True if it had not finished."""
        task_id, key = parse_task_id(text)
        if key:
            return self.cancel_kept(key)
        task = self.tasks.get(task_id)
        if task is None or task.cancelled or task.key:
            return False, {}
        client, client_task_id = task.client, task.client_task_id
        stops = self.cancel(client, [client_task_id])
        if client in self.clients:
            outcome = failure_outcome(FailureCode.CANCELLED, "cancelled by an operator")
            self.decided.append((client, client_task_id, Status.ERROR, outcome))
        return True, stops

    def retry(self, text: str) -> dict[str, Any]:
        """Run a failed background task again, as a new background task (a new id) with the
        same function, arguments and queue; the failed one stays as it was."""
        _, key = parse_task_id(text)
        record = self.store.get(key) if key else None
        if record is None:
            raise ValueError(f"no background task {text}: only a background task can be retried")
        if record.state != "failed" or not record.frames:
            raise ValueError(f"task {text} is {record.state}: only a failed one can be retried")
        route = record.route
        if route is not None:
            route = route._replace(not_before=0.0, expires=0.0)
        item = SubmitItem(
            0,
            record.fn_hash,
            record.kind,
            record.window,
            (),
            list(record.frames),
            ids.new_id(),
            record.keep,
            record.function,
            0,
            route,
        )
        task, kept = self._keep(item, record.group, self.wall())
        self.store.add([kept])
        self.counters["enqueued"] += 1
        self.counters["submitted"] += 1
        return {"id": ids.to_text(task.key), "retry_of": text}

    def drain(self, pid: int) -> dict[str, Any]:
        """Send nothing new to the worker process ``pid``; what it runs finishes there."""
        for worker in self.workers.values():
            if worker.pid == pid:
                if not worker.draining:
                    worker.draining = True
                    self.monitor.worker_event("drained", worker, self.wall(), self.clock())
                return {"pid": pid, "drained": True, "running": len(worker.running)}
        raise ValueError(f"no worker process {pid} is connected")

    # -- metrics ------------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """The figures ``/metrics`` exposes, as plain JSON (see squall.metrics)."""
        monitor = self.monitor
        monitor.aggregate()
        queues = self.queue_stats()
        workers = dict.fromkeys(("up", "blocked", "draining"), 0)
        slots = {"busy": 0, "free": 0}
        for worker in self.workers.values():
            state = "draining" if worker.draining else ("blocked" if worker.blocked else "up")
            workers[state] += 1
            slots["busy"] += len(worker.running)
            slots["free"] += max(0, worker.free)
        workers["lost"] = sum(1 for w in monitor.gone_workers.values() if w["state"] == "lost")
        return {
            "tasks": [[q, f, o, n] for (q, f, o), n in sorted(monitor.outcomes.items())],
            "runtime": {q: h.describe() for q, h in sorted(monitor.runtime.items())},
            "wait": {q: h.describe() for q, h in sorted(monitor.wait.items())},
            "queue_depth": {q: e["queued"] for q, e in sorted(queues.items())},
            "scheduled": {q: e["scheduled"] for q, e in sorted(queues.items())},
            "running": {q: e["running"] for q, e in sorted(queues.items())},
            "submitted": dict(sorted(monitor.arrived.items())),
            "retries": dict(sorted(monitor.retries.items())),
            "workers": workers,
            "slots": slots,
            "redeliveries": self.counters["redelivered"],
            "clients": sum(1 for peer in self.clients if peer),
            "router": self.process_info(),
        }


def _text(query: dict[str, Any], field: str) -> str:
    value = query.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{field} is a string")
    return value


def _optional_text(query: dict[str, Any], field: str) -> str | None:
    value = query.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field} is a string")
    return value


def _number(query: dict[str, Any], field: str) -> int:
    value = query.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} is a whole number")
    return value


def _optional_number(query: dict[str, Any], field: str) -> float | None:
    value = query.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} is a number")
    return float(value)
