"""The router core's routing, on fake clocks: delayed tasks, expiry, named queues, priorities
and global limits. No sockets: each decision is checked in microseconds."""

from __future__ import annotations

import hashlib
import random

import pytest

from squall.protocol import (
    HASH_SIZE,
    FailureCode,
    Kind,
    Route,
    Status,
    SubmitItem,
    name_hash,
    read_error_summary,
)
from squall.router.limits import Limiter, parse_limit, parse_rate
from squall.router.state import RouterState

C = b"client"
BODY = b"body"
HASH = hashlib.blake2b(BODY, digest_size=HASH_SIZE).digest()


class Clock:
    """A fake clock that moves only when told; ``wall`` is Unix time, ``mono`` monotonic."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def wall(self) -> float:
        return self.t

    def mono(self) -> float:
        return self.t - 1_700_000_000.0


def item(task_id: int, route: Route | None = None) -> SubmitItem:
    return SubmitItem(task_id, HASH, Kind.CALL, 0, (), [b"x"], route=route)


def state_at(clock: Clock) -> RouterState:
    state = RouterState(clock=clock.mono, wall=clock.wall)
    state.add_client(C, 1)
    state.body_arrived(HASH, BODY, C)
    return state


def dispatched(state: RouterState) -> list[int]:
    """Client task ids sent to workers now, in dispatch order."""
    return [t.client_task_id for _, tasks in state.dispatch() for t in tasks]


def test_100000_delayed_tasks_come_out_in_due_order() -> None:
    clock = Clock()
    state = state_at(clock)
    state.add_worker(b"w", 1, 200_000)
    due = {i: clock.t + random.uniform(1, 1000) for i in range(1, 100_001)}
    state.submit(C, [item(i, Route(not_before=due[i])) for i in due])
    assert dispatched(state) == [] and state.stats()["scheduled"] == 100_000
    order: list[int] = []
    while len(order) < len(due):
        clock.t = min(clock.t + 5.0, max(due.values()))  # time moves on in steps
        released = dispatched(state)
        assert all(due[i] <= clock.t for i in released)
        order += sorted(released, key=due.__getitem__)
    assert order == sorted(due, key=due.__getitem__)
    assert state.next_due() == float("inf")


def test_the_router_wakes_when_the_next_delayed_task_is_due_and_not_before() -> None:
    clock = Clock()
    state = state_at(clock)
    state.add_worker(b"w", 1, 10)
    state.submit(
        C, [item(1, Route(not_before=clock.t + 30)), item(2, Route(not_before=clock.t + 5))]
    )
    assert state.next_due() == pytest.approx(clock.mono() + 5)
    clock.t += 4.999
    assert dispatched(state) == []
    clock.t += 0.002
    assert dispatched(state) == [2]
    assert state.next_due() == pytest.approx(clock.mono() + 25, abs=0.01)


def test_a_held_task_can_be_cancelled_and_never_runs() -> None:
    clock = Clock()
    state = state_at(clock)
    state.add_worker(b"w", 1, 10)
    state.submit(C, [item(1, Route(not_before=clock.t + 10))])
    state.cancel(C, [1])
    clock.t += 11
    assert dispatched(state) == [] and state.stats()["scheduled"] == 0


def test_an_unstarted_task_fails_with_task_expired_at_its_expiry() -> None:
    clock = Clock()
    state = state_at(clock)  # no worker: nothing starts
    state.submit(C, [item(1, Route(expires=clock.t + 2)), item(2)])
    clock.t += 1
    assert dispatched(state) == [] and state.take_decided() == []
    clock.t += 1.5
    state.dispatch()
    (decided,) = state.take_decided()
    assert decided[:3] == (C, 1, Status.ERROR) and b"expired" in decided[3][0]
    assert b'"code": %d' % FailureCode.TASK_EXPIRED in decided[3][0]
    state.add_worker(b"w", 1, 10)
    assert dispatched(state) == [2]  # the expired one never runs


def test_a_started_task_does_not_expire() -> None:
    clock = Clock()
    state = state_at(clock)
    state.add_worker(b"w", 1, 10)
    state.submit(C, [item(1, Route(expires=clock.t + 2))])
    assert dispatched(state) == [1]
    clock.t += 3
    state.dispatch()
    assert state.take_decided() == []


def test_priorities_order_within_a_queue_fifo_among_equals() -> None:
    clock = Clock()
    state = state_at(clock)
    priorities = [0, 5, -1, 5, 9, 0, 5]
    state.submit(C, [item(i, Route(priority=p)) for i, p in enumerate(priorities, 1)])
    state.add_worker(b"w", 1, 100)
    assert dispatched(state) == [5, 2, 4, 7, 1, 6, 3]


def test_workers_get_only_tasks_of_the_queues_they_serve() -> None:
    clock = Clock()
    state = state_at(clock)
    state.submit(C, [item(1, Route("emails")), item(2), item(3, Route("reports"))])
    state.add_worker(b"mail", 1, 10, queues=("emails",))
    plan = {w.peer: [t.client_task_id for t in ts] for w, ts in state.dispatch()}
    assert plan == {b"mail": [1]}
    queues = state.stats()["queues"]
    assert queues["reports"] == {"queued": 1, "running": 0, "scheduled": 0, "workers": 0}
    state.add_worker(b"both", 2, 10, queues=("default", "reports"))
    sent = [(w.peer, t.client_task_id) for w, ts in state.dispatch() for t in ts]
    assert sorted(sent) == [(b"both", 2), (b"both", 3)]


def test_a_global_rate_limit_holds_to_one_period_s_worth_in_every_window() -> None:
    clock = Clock()
    state = state_at(clock)
    state.limiter.set("emails", 50, 1.0)
    for w in range(4):
        state.add_worker(b"w%d" % w, w, 1000, queues=("emails",))
    state.submit(C, [item(i, Route("emails")) for i in range(1, 2001)])
    starts: list[float] = []
    end = clock.t + 10
    while clock.t < end:
        n = len(dispatched(state))
        starts += [clock.t] * n
        for worker in state.workers.values():  # they finish at once: only the rate limits
            for task_id in list(worker.running):
                state.complete(worker.peer, task_id, Status.OK, [b"r"])
        # the router sleeps until its next due time (next_due is monotonic)
        clock.t = min(end, max(clock.t + 0.01, state.next_due() + 1_700_000_000.0))
    assert 500 - 50 <= len(starts) <= 500 + 1
    for i, t in enumerate(starts):  # never more than 50 in any 1 s window
        assert sum(1 for u in starts[i:] if u < t + 1.0) <= 50


def test_a_concurrency_limit_bounds_what_runs_at_once() -> None:
    clock = Clock()
    state = state_at(clock)
    state.limiter.set("reports", None, 1.0, 4)
    state.add_worker(b"w", 1, 1000, queues=("reports",))
    state.submit(C, [item(i, Route("reports")) for i in range(1, 21)])
    assert len(dispatched(state)) == 4
    assert dispatched(state) == []
    worker = state.workers[b"w"]
    state.complete(b"w", next(iter(worker.running)), Status.OK, [b"r"])
    assert len(dispatched(state)) == 1


def test_limit_specs_parse_or_fail_in_one_line() -> None:
    assert parse_rate("100/s") == (100, 1.0)
    assert parse_rate("10/m") == (10, 60.0)
    assert parse_rate("5/2s") == (5, 2.0)
    assert parse_limit("emails=100/s,concurrency:4") == ("emails", 100, 1.0, 4)
    assert parse_limit("reports=concurrency:2") == ("reports", None, 1.0, 2)
    for bad in ("emails", "emails=fast", "emails=0/s", "emails=concurrency:0", "=1/s"):
        with pytest.raises(ValueError):
            parse_limit(bad)
    limiter = Limiter()
    limiter.set("q", 2, 1.0)
    assert limiter.allowance("q", 0.0, 0) == 2
    limiter.started("q", 2, 0.0)
    assert limiter.allowance("q", 0.5, 0) == 0 and limiter.next_room("q") > 1.0
    assert limiter.allowance("q", 1.1, 0) == 2


def test_a_call_by_name_goes_only_to_workers_serving_that_name() -> None:
    clock = Clock()
    state = state_at(clock)
    named = SubmitItem(
        1, name_hash("img.resize"), Kind.CALL, 0, (), [b"x"], route=Route(function="img.resize")
    )
    state.submit(C, [named, item(2)])
    state.add_worker(b"plain", 1, 10)
    assert dispatched(state) == [2]  # the plain worker never gets the named call
    assert state.stats()["functions"]["img.resize"]["queued"] == 1
    state.add_worker(b"images", 2, 10, functions=("img.resize",))
    assert [(w.peer, t.client_task_id) for w, ts in state.dispatch() for t in ts] == [
        (b"images", 1)
    ]


def test_a_published_name_runs_its_current_version_on_any_worker() -> None:
    clock = Clock()
    state = state_at(clock)
    answer = state.catalog_op({"op": "publish", "name": "reports.daily"}, [b"v1 body"])
    assert answer == {"name": "reports.daily", "version": 1}
    answer = state.catalog_op({"op": "publish", "name": "reports.daily"}, [b"v2 body"])
    assert answer["version"] == 2
    call = SubmitItem(
        1,
        name_hash("reports.daily"),
        Kind.JSON_CALL,
        0,
        (),
        [b"{}"],
        route=Route(function="reports.daily"),
    )
    state.submit(C, [call])
    state.add_worker(b"any", 1, 10)
    ((worker, (task,)),) = state.dispatch()
    assert task.fn_hash == hashlib.blake2b(b"v2 body", digest_size=HASH_SIZE).digest()
    assert state.body_for(b"any", task.fn_hash)[0] == b"v2 body"


def test_a_call_by_name_must_carry_its_names_hash_and_only_by_name_may_be_json() -> None:
    state = state_at(Clock())
    forged = SubmitItem(1, HASH, Kind.CALL, 0, (), [b"x"], route=Route(function="a.b"))
    unnamed_json = SubmitItem(2, HASH, Kind.JSON_CALL, 0, (), [b"{}"])
    state.submit(C, [forged, unnamed_json])
    codes = [FailureCode(read_error_summary(frames[0]).code) for *_, frames in state.decided]
    assert codes == [FailureCode.UNKNOWN_FUNCTION] * 2
