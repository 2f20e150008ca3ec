"""The router's record of what ran (squall.router.monitor, squall.router.inspection), driven
without sockets: messages in, a fake clock, and the QUERY answers operators read."""

from __future__ import annotations

import math
from typing import Any

import pytest

from squall import protocol
from squall.protocol import FailureCode, Kind, Role, Status, SubmitItem
from squall.router.instructions import SendAnswer, SendEvents, SendTasks
from squall.router.monitor import BUCKETS, Histogram, Monitor, parse_task_id, task_text_id
from squall.router.state import RouterState

pytestmark = pytest.mark.timeout(60)

BODY = b"a cloudpickled function"
H = protocol.function_hash(BODY)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def core(**kwargs: Any) -> tuple[RouterState, Clock]:
    clock = Clock()
    return RouterState(clock=clock, wall=clock, liveness=1_000.0, **kwargs), clock


def client(state: RouterState, name: str = "app.tasks.resize") -> bytes:
    peer = protocol.new_peer_id()
    state.handle(peer, protocol.encode_hello(Role.CLIENT, 1))
    state.handle(peer, protocol.encode_fn_body(H, BODY, name))
    return peer


def worker(state: RouterState, pid: int = 7, capacity: int = 10, host: str = "node-a") -> bytes:
    peer = protocol.new_peer_id()
    hello = protocol.encode_hello(Role.WORKER, pid, capacity, queues=("default",), host=host)
    state.handle(peer, hello)
    return peer


def submit(state: RouterState, peer: bytes, ids: range, queue: str = "default") -> None:
    route = None if queue == "default" else protocol.Route(queue)
    items = [SubmitItem(i, H, Kind.CALL, 0, (), [b"args"], route=route) for i in ids]
    state.handle(peer, protocol.encode_submit(items))


def dispatched(state: RouterState) -> dict[bytes, list[int]]:
    return {
        s.worker: [t.id for t in s.tasks] for s in state.take_sends() if isinstance(s, SendTasks)
    }


def finish(state: RouterState, peer: bytes, task_ids: list[int], status: int = Status.OK) -> None:
    frames: list[Any] = [b"result"]
    if status == Status.ERROR:
        frames = protocol.error_outcome("ValueError", "bad input", "Traceback...\nValueError")
    state.handle(peer, protocol.encode_result([(t, status, frames) for t in task_ids]))


#: what the core sent besides the answers ask() took (the test reads it after)
OTHER_SENDS: list[Any] = []


def expanded(sends: list[Any]) -> list[dict[str, Any]]:
    """The events of these SendEvents, as a subscriber reads them (over the wire format)."""
    events: list[dict[str, Any]] = []
    for send in sends:
        frames = protocol.encode_events(send.events)
        _, body = protocol.parse_header(frames)
        events += protocol.expand_events(*protocol.decode_events(body, frames[1:]))
    return events


def ask(state: RouterState, peer: bytes, query: dict[str, Any]) -> Any:
    state.handle(peer, protocol.encode_query(1, query))
    sends = state.take_sends()
    answers = [s for s in sends if isinstance(s, SendAnswer)]
    OTHER_SENDS[:] = [s for s in sends if not isinstance(s, SendAnswer)]
    assert len(answers) == 1, answers
    return answers[0].answer


def test_every_finished_task_is_recorded_with_its_name_times_worker_and_error_text() -> None:
    state, clock = core()
    c, w = client(state), worker(state, pid=42)
    submit(state, c, range(1, 4))
    clock.now += 0.5  # waited half a second
    (ids,) = dispatched(state).values()
    clock.now += 2.0  # ran two seconds
    finish(state, w, ids[:2])
    finish(state, w, ids[2:], Status.ERROR)
    page = ask(state, c, {"op": "tasks"})["tasks"]
    assert [t["state"] for t in page] == ["failed", "succeeded", "succeeded"]  # newest first
    failed = page[0]
    assert failed["name"] == "app.tasks.resize" and failed["worker_pid"] == 42
    assert failed["error_type"] == "ValueError" and failed["error_message"] == "bad input"
    assert failed["started"] - failed["submitted"] == pytest.approx(0.5)
    assert failed["runtime"] == pytest.approx(2.0) and failed["attempts"] == 1
    record = ask(state, c, {"op": "task", "id": failed["id"]})
    assert record["traceback"].endswith("ValueError")
    assert [event for event, _ in record["timeline"]] == ["submitted", "started", "failed"]
    metrics = ask(state, c, {"op": "metrics"})
    assert ["default", "app.tasks.resize", "succeeded", 2] in metrics["tasks"]
    assert ["default", "app.tasks.resize", "failed", 1] in metrics["tasks"]
    assert metrics["runtime"]["default"]["count"] == 3
    assert metrics["wait"]["default"]["sum"] == pytest.approx(1.5)


def test_queries_filter_by_state_name_queue_and_time_and_page() -> None:
    state, clock = core()
    c, w = client(state), worker(state, capacity=100)
    submit(state, c, range(1, 21))
    (ids,) = dispatched(state).values()
    finish(state, w, ids)
    clock.now += 100
    submit(state, c, range(21, 26), queue="emails")  # nobody serves it: they stay queued
    everything = ask(state, c, {"op": "tasks", "limit": 1000})["tasks"]
    assert len(everything) == 25 and {t["state"] for t in everything[:5]} == {"queued"}
    emails = ask(state, c, {"op": "tasks", "queue": "emails"})["tasks"]
    assert len(emails) == 5 and all(t["queue"] == "emails" for t in emails)
    recent = ask(state, c, {"op": "tasks", "state": "succeeded", "since": clock.now - 50})
    assert recent["tasks"] == []
    first = ask(state, c, {"op": "tasks", "state": "succeeded", "limit": 8})
    second = ask(state, c, {"op": "tasks", "state": "succeeded", "limit": 8, "offset": 8})
    third = ask(state, c, {"op": "tasks", "state": "succeeded", "limit": 8, "offset": 16})
    assert first["next"] == 8 and second["next"] == 16 and third["next"] is None
    seen = [t["id"] for page in (first, second, third) for t in page["tasks"]]
    assert len(seen) == len(set(seen)) == 20
    assert ask(state, c, {"op": "tasks", "name": "resize", "limit": 1000})["tasks"]
    assert ask(state, c, {"op": "tasks", "name": "nothing-like-it"})["tasks"] == []
    assert "error" in ask(state, c, {"op": "tasks", "state": "bogus"})


def test_the_history_is_bounded() -> None:
    state, _ = core(history=10)
    c, w = client(state), worker(state, capacity=100)
    submit(state, c, range(1, 51))
    (ids,) = dispatched(state).values()
    finish(state, w, ids)
    page = ask(state, c, {"op": "tasks", "limit": 1000})["tasks"]
    assert len(page) == 10
    assert ask(state, c, {"op": "metrics"})["tasks"] == [
        ["default", "app.tasks.resize", "succeeded", 50]
    ]


def test_events_are_built_only_for_subscribers_and_in_order_per_task() -> None:
    state, clock = core()
    c, w = client(state), worker(state)
    submit(state, c, range(1, 3))
    sends = state.take_sends()
    assert not [s for s in sends if isinstance(s, SendEvents)]
    assert state.monitor.pending == []  # nobody subscribed: nothing was built
    (ids,) = [[t.id for t in s.tasks] for s in sends if isinstance(s, SendTasks)]
    finish(state, w, ids)
    subscriber = client(state)
    assert ask(state, subscriber, {"op": "subscribe", "types": None}) == {"subscribed": True}
    submit(state, c, range(3, 5))
    sends = state.take_sends()
    (ids,) = [[t.id for t in s.tasks] for s in sends if isinstance(s, SendTasks)]
    finish(state, w, ids[:1])
    finish(state, w, ids[1:], Status.ERROR)
    batches = [s for s in [*sends, *state.take_sends()] if isinstance(s, SendEvents)]
    events = expanded(batches)
    assert all(batch.peers == [subscriber] for batch in batches)
    by_task: dict[str, list[str]] = {}
    for event in events:
        by_task.setdefault(event["id"], []).append(event["type"])
    assert sorted(by_task.values()) == [
        ["task.submitted", "task.started", "task.failed"],
        ["task.submitted", "task.started", "task.succeeded"],
    ]
    failed = next(e for e in events if e["type"] == "task.failed")
    assert failed["error_message"] == "bad input" and failed["name"] == "app.tasks.resize"
    ask(state, subscriber, {"op": "unsubscribe"})
    submit(state, c, range(5, 6))
    assert state.monitor.pending == []


def test_worker_events_and_redelivery_reach_subscribers() -> None:
    state, clock = core()
    c = client(state)
    ask(state, c, {"op": "subscribe"})
    w = worker(state, pid=11, host="node-b")
    submit(state, c, range(1, 3))
    dispatched(state)
    state.remove_worker(w, died=True)
    events = expanded([s for s in state.take_sends() if isinstance(s, SendEvents)])
    kinds = [e["type"] for e in events]
    assert "worker.lost" in kinds and kinds.count("task.redelivered") == 2
    status = ask(state, c, {"op": "status"})
    assert status["gone_workers"][0]["pid"] == 11 and status["gone_workers"][0]["state"] == "lost"
    assert status["gone_workers"][0]["host"] == "node-b"


def test_status_reports_workers_queues_rates_and_oldest_wait() -> None:
    state, clock = core()
    c, w = client(state), worker(state, pid=5, capacity=2, host="node-a")
    state.handle(w, protocol.encode_heartbeat(rss=30 << 20))
    state.tick()
    submit(state, c, range(1, 11))
    dispatched(state)
    clock.now += 4.0
    state.tick()
    status = ask(state, c, {"op": "status"})
    (described,) = status["workers"]
    assert described["host"] == "node-a" and described["rss"] == 30 << 20
    assert described["running"] == 2 and described["capacity"] == 2
    queue = status["queues"]["default"]
    assert queue["queued"] == 8 and queue["running"] == 2
    assert queue["oldest_wait"] == pytest.approx(4.0)
    assert queue["rate_in"] == pytest.approx(10 / 4.0)
    assert status["totals"]["submitted"] == 10


def test_drain_sends_a_worker_nothing_new() -> None:
    state, _ = core()
    c = client(state)
    worker(state, pid=9, capacity=1)
    assert ask(state, c, {"op": "drain", "pid": 9})["drained"] is True
    submit(state, c, range(1, 3))
    assert dispatched(state) == {}
    assert ask(state, c, {"op": "status"})["workers"][0]["state"] == "draining"
    assert "error" in ask(state, c, {"op": "drain", "pid": 12345})


def test_an_operator_cancels_a_queued_task_by_id_and_its_client_hears_of_it() -> None:
    state, _ = core()
    c = client(state)
    submit(state, c, range(1, 2))
    (task,) = ask(state, c, {"op": "tasks"})["tasks"]
    operator = client(state)
    answer = ask(state, operator, {"op": "cancel", "ids": [task["id"]]})
    assert answer == [{"id": task["id"], "cancelled": True}]
    outcomes = [s for s in OTHER_SENDS if type(s).__name__ == "SendResults"]
    (send,) = outcomes
    (_, status, frames) = send.outcomes[0]
    summary = protocol.read_error_summary(frames[0])
    assert send.client == c and status == Status.ERROR and summary.code == FailureCode.CANCELLED
    assert ask(state, c, {"op": "tasks"})["tasks"][0]["state"] == "cancelled"


def test_ids_and_histograms() -> None:
    assert parse_task_id(task_text_id(0x1234)) == (0x1234, b"")
    with pytest.raises(ValueError, match="not a squall task id"):
        parse_task_id("nope")
    hist = Histogram()
    for value in (0.0001, 0.003, 0.003, 7.0, 1e9):
        hist.observe(value)
    described = hist.describe()
    assert described["count"] == 5 and described["buckets"][-1] == ["+Inf", 5]
    assert hist.quantile(0.5) == 0.005 and hist.quantile(1.0) == math.inf
    assert len(described["buckets"]) == len(BUCKETS)
    monitor = Monitor(history=0)
    assert monitor.history.maxlen == 0
