"""The router's core as the socket loop drives it: messages in, ordered instructions out.

No sockets and no processes: ``RouterState.handle`` gets each message's frames as a peer sent
them, ``tick`` the passing of (fake) time, and ``take_sends`` hands back what to send.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from squall import protocol
from squall.protocol import ErrorCode, FailureCode, Kind, Role, Status, StreamItem, SubmitItem
from squall.router.background import KEPT
from squall.router.instructions import (
    CutOff,
    Log,
    Send,
    SendAcks,
    SendBody,
    SendCancel,
    SendError,
    SendHeartbeats,
    SendItems,
    SendResults,
    SendStarted,
    SendStats,
    SendTasks,
    SendWelcome,
    SendWithdrawn,
    TaskFailed,
)
from squall.router.state import COUNTERS, CUT_OFF_REMINDER, GARBAGE_LIMIT, RouterState

BODY = b"a cloudpickled function"
H = protocol.function_hash(BODY)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Keys:
    """A stand-in for ``ServerKeys``: user id -> role, and worker groups."""

    def __init__(self, roles: dict[str, str], groups: dict[str, str] | None = None) -> None:
        self.roles = roles
        self.groups = groups or {}

    def role_of(self, user_id: str) -> str | None:
        return self.roles.get(user_id)

    def group_of(self, user_id: str) -> str:
        return self.groups.get(user_id, "")

    def has_group(self, name: str) -> bool:
        return name in self.groups.values()


def core(authority: Keys | None = None, **kwargs: Any) -> tuple[RouterState, Clock]:
    clock = Clock()
    return RouterState(clock=clock, authority=authority, **kwargs), clock


def sends_of(state: RouterState, *kinds: type) -> list[Any]:
    """What the core would send now, without its log lines (or only ``kinds``)."""
    sends = state.take_sends()
    if kinds:
        return [s for s in sends if isinstance(s, kinds)]
    return [s for s in sends if not isinstance(s, Log)]


def client(state: RouterState, pid: int = 1, user: str | None = None) -> bytes:
    peer = protocol.new_peer_id()
    state.handle(peer, protocol.encode_hello(Role.CLIENT, pid), user)
    state.handle(peer, protocol.encode_fn_body(H, BODY), user)
    return peer


def worker(state: RouterState, capacity: int = 10, user: str | None = None) -> bytes:
    peer = protocol.new_peer_id()
    state.handle(peer, protocol.encode_hello(Role.WORKER, 7, capacity), user)
    return peer


def submit(
    state: RouterState, peer: bytes, ids: range, kind: int = Kind.CALL, window: int = 0
) -> None:
    items = [SubmitItem(i, H, kind, window, (), [b"args-%d" % i]) for i in ids]
    state.handle(peer, protocol.encode_submit(items))


def tasks_sent(sends: list[Send]) -> dict[bytes, list[int]]:
    return {
        s.worker: [t.client_task_id for t in s.tasks] for s in sends if isinstance(s, SendTasks)
    }


def test_hello_is_welcomed_and_a_stranger_is_asked_to_say_hello_once_a_second() -> None:
    state, clock = core()
    w = worker(state)
    c = client(state)
    assert sends_of(state) == [SendWelcome(w, 1, False), SendWelcome(c, 1, False)]
    stranger = protocol.new_peer_id()
    for _ in range(3):  # a burst of stale messages gets one reply
        submit(state, stranger, range(1, 2))
        state.handle(stranger, protocol.encode_heartbeat())
    assert sends_of(state) == [SendError(stranger, ErrorCode.UNKNOWN_PEER, "say HELLO again")]
    clock.now += 1.0
    state.handle(stranger, protocol.encode_result([(1, Status.OK, [b"r"])]))
    assert sends_of(state) == [SendError(stranger, ErrorCode.UNKNOWN_PEER, "say HELLO again")]
    assert state.counters["stale_results"] == 1


def test_dispatch_sends_tasks_then_started_with_the_clients_own_ids() -> None:
    state, _ = core()
    w = worker(state)
    c = client(state)
    state.take_sends()
    submit(state, c, range(1, 4))
    sends = sends_of(state)
    assert [type(s) for s in sends] == [SendTasks, SendStarted]
    assert tasks_sent(sends) == {w: [1, 2, 3]}
    assert sends[1] == SendStarted(c, [1, 2, 3])
    assert sends_of(state) == []  # taken once


def test_started_waits_its_delay_and_is_never_sent_for_a_task_that_finished_first() -> None:
    state, clock = core(started_delay=0.002)
    w = worker(state)
    c = client(state)
    state.take_sends()
    assert state.started_due() == float("inf")  # nothing to announce: no reason to wake
    submit(state, c, range(1, 4))
    assert [type(s) for s in sends_of(state)] == [SendTasks]  # no STARTED yet
    assert state.started_due() == clock.now + 0.002
    # Task 1 finishes within the delay: its RESULT says it started; no STARTED for it, ever.
    task1 = state.by_client[(c, 1)]
    clock.now += 0.001
    state.handle(w, protocol.encode_result([(task1.id, Status.OK, [b"r"])]))
    assert [type(s) for s in sends_of(state)] == [SendResults]
    clock.now += 0.001
    assert sends_of(state) == [SendStarted(c, [2, 3])]  # due: the ones still running
    assert state.started_due() == float("inf")
    # A task that finishes within the delay, alone: no STARTED at all.
    submit(state, c, range(4, 5))
    state.take_sends()
    state.handle(w, protocol.encode_result([(state.by_client[(c, 4)].id, Status.OK, [b"r"])]))
    state.take_sends()
    clock.now += 0.01
    assert sends_of(state, SendStarted) == []


def test_cancels_go_before_tasks_and_items_before_results_and_acks_are_translated() -> None:
    state, _ = core()
    w = worker(state, capacity=2)
    c = client(state)
    submit(state, c, range(1, 2), kind=Kind.STREAM, window=4)
    submit(state, c, range(2, 3))
    state.take_sends()
    stream, call = state.by_client[(c, 1)], state.by_client[(c, 2)]
    # In one pass: the stream yields and ends, the client acknowledges items and cancels the
    # call, and submits a new task that takes the freed slot.
    state.handle(c, protocol.encode_ack([(1, 2)]))
    state.handle(w, protocol.encode_items([StreamItem(stream.id, 2, True, [b"packed"])]))
    state.handle(w, protocol.encode_result([(stream.id, Status.OK, [])]))
    state.handle(c, protocol.encode_cancel([2]))
    submit(state, c, range(3, 4))
    sends = sends_of(state)
    assert [type(s) for s in sends] == [
        SendCancel,
        SendTasks,
        SendItems,
        SendResults,
        SendStarted,
        SendAcks,
    ]
    assert sends[0] == SendCancel(w, [call.id])
    assert tasks_sent(sends) == {w: [3]}
    assert sends[2] == SendItems(c, [StreamItem(1, 2, True, [b"packed"])])  # the client's id
    assert sends[3] == SendResults(c, [(1, Status.OK, [])])
    assert sends[5] == SendAcks(w, [(stream.id, 2)])  # the router's id, for the worker


def test_a_failure_is_noted_for_the_log_and_a_refusal_reaches_the_client_as_a_result() -> None:
    state, _ = core(max_queued=1)
    w = worker(state)
    c = client(state)
    state.take_sends()
    state.set_capacity(w, 0)
    submit(state, c, range(1, 3))  # the second does not fit in the client's queue
    ((refused,),) = [s.outcomes for s in sends_of(state, SendResults)]
    assert refused[:2] == (2, Status.ERROR)
    assert protocol.read_error_summary(refused[2][0]).code is FailureCode.QUEUE_FULL
    state.set_capacity(w, 1)
    state.take_sends()
    task = state.by_client[(c, 1)]
    outcome = protocol.error_outcome("builtins.ValueError", "bad")
    state.handle(w, protocol.encode_result([(task.id, Status.ERROR, outcome)]))
    sends = state.take_sends()
    assert TaskFailed(task.id, H, outcome) in sends
    assert SendResults(c, [(1, Status.ERROR, outcome)]) in sends


def test_withdraw_and_stats_are_answered_in_arrival_order() -> None:
    state, _ = core()
    c = client(state)
    state.take_sends()
    submit(state, c, range(1, 3))
    state.handle(c, protocol.encode_withdraw([(1, False), (9, False)]))
    state.handle(c, protocol.encode_stats_request())
    withdrawn, stats = sends_of(state)
    assert withdrawn == SendWithdrawn(c, [(1, True), (9, False)])
    assert isinstance(stats, SendStats) and stats.stats["queued"] == 1
    assert stats.stats["cancelled"] == 1 and "worker_pids" in stats.stats


def test_a_worker_missing_a_body_gets_it_from_the_cache() -> None:
    state, _ = core()
    w = worker(state)
    c = client(state)
    submit(state, c, range(1, 2))
    state.take_sends()
    state.handle(w, protocol.encode_fn_fetch(H))
    assert sends_of(state) == [SendBody(w, H, BODY)]


# ---------------------------------------------------------------------------------------------
# Roles: the keys only say who is what; the core says what each may send


def test_roles_are_enforced_by_the_core() -> None:
    keys = Keys({"client:a": "client", "worker:b": "worker"})
    state, _ = core(keys)
    c = client(state, user="client:a")
    w = worker(state, user="worker:b")
    assert sends_of(state) == [SendWelcome(c, 0, False), SendWelcome(w, 1, False)]
    # A client key may not report results, nor say HELLO as a worker; a worker may not submit.
    state.handle(c, protocol.encode_result([(1, Status.OK, [b"r"])]), "client:a")
    rogue = protocol.new_peer_id()
    state.handle(rogue, protocol.encode_hello(Role.WORKER, 9, 100), "client:a")
    state.handle(w, protocol.encode_submit([SubmitItem(1, H, 0, 0, (), [b"x"])]), "worker:b")
    assert sends_of(state) == [
        SendError(c, ErrorCode.REFUSED, "RESULT is not allowed for your key"),
        SendError(rogue, ErrorCode.REFUSED, "HELLO is not allowed for your key"),
        SendError(w, ErrorCode.REFUSED, "SUBMIT is not allowed for your key"),
    ]
    assert state.counters["refused"] == 3
    assert rogue not in state.workers


def test_an_impostor_gets_nothing_through_and_ends_the_owners_session() -> None:
    keys = Keys({"client:a": "client", "client:evil": "client"})
    state, _ = core(keys)
    c = client(state, user="client:a")
    state.take_sends()
    state.handle(c, protocol.encode_stats_request(), "client:evil")
    assert sends_of(state) == []
    assert state.counters["impostors"] == 1 and c not in state.clients


def test_a_watchdog_speaks_only_for_a_worker_of_its_own_key() -> None:
    keys = Keys({"worker:b": "worker", "worker:other": "worker"})
    state, clock = core(keys, blocked_after=2.0)
    w = worker(state, user="worker:b")
    clock.now += 3.5
    foreign = protocol.new_peer_id()
    state.handle(foreign, protocol.encode_heartbeat(w), "worker:other")
    assert state.expired_workers() == [w]  # that beat did not count for w
    own = w + b"/watchdog"
    state.handle(own, protocol.encode_heartbeat(w), "worker:b")
    assert state.expired_workers() == []


def test_a_revoked_key_is_cut_off_and_its_messages_dropped_unread() -> None:
    keys = Keys({"client:a": "client"})
    state, clock = core(keys)
    c = client(state, user="client:a")
    state.take_sends()
    del keys.roles["client:a"]
    state.keys_reloaded()
    assert sends_of(state) == [CutOff(c, "your key was revoked")]
    assert c not in state.clients and state.counters["peers_cut_off"] == 1
    state.handle(c, protocol.encode_hello(Role.CLIENT, 1), "client:a")
    assert sends_of(state) == [] and c not in state.clients
    clock.now += CUT_OFF_REMINDER
    state.handle(c, protocol.encode_heartbeat(), "client:a")
    assert sends_of(state) == [CutOff(c, "your key was revoked")]  # reminded, rarely


def test_worker_groups_need_keys_and_a_known_group() -> None:
    state, _ = core()
    peer = protocol.new_peer_id()
    state.handle(peer, protocol.encode_hello(Role.CLIENT, 1, group="gpu"))
    ((error,),) = [sends_of(state)]
    assert error.code is ErrorCode.REFUSED and "--auth" in error.text
    keys = Keys({"client:a": "client", "worker:g": "worker"}, {"worker:g": "gpu"})
    state, _ = core(keys)
    state.handle(peer, protocol.encode_hello(Role.CLIENT, 1, group="cpu"), "client:a")
    ((error,),) = [sends_of(state)]
    assert "no worker group 'cpu'" in error.text
    state.handle(peer, protocol.encode_hello(Role.CLIENT, 1, group="gpu"), "client:a")
    assert sends_of(state) == [SendWelcome(peer, 0, False)]
    assert state.clients[peer].group == "gpu"


def test_stats_hide_processes_and_clients_from_keys() -> None:
    state, _ = core(Keys({"client:a": "client"}))
    c = client(state, user="client:a")
    state.take_sends()
    state.handle(c, protocol.encode_stats_request(), "client:a")
    ((stats,),) = [sends_of(state)]
    assert "worker_pids" not in stats.stats and "clients" not in stats.stats


# ---------------------------------------------------------------------------------------------
# Garbage, errors and counters


def test_garbage_is_answered_counted_and_past_the_limit_cut_off() -> None:
    state, _ = core()
    peer = protocol.new_peer_id()
    state.handle(peer, [b"SQ"])
    state.handle(peer, [b"SQ\x63\x01"])  # another version
    bad, version = sends_of(state)
    assert bad.code is ErrorCode.BAD_MESSAGE and version.code is ErrorCode.VERSION
    for _ in range(GARBAGE_LIMIT):
        state.handle(peer, [b"\x00 junk"])
    sends = sends_of(state)
    assert len(sends) == GARBAGE_LIMIT and isinstance(sends[-1], CutOff)
    assert state.counters["protocol_errors"] == GARBAGE_LIMIT + 2
    state.handle(peer, [b"\x00 junk"])
    assert sends_of(state) == [] and state.counters["protocol_errors"] == GARBAGE_LIMIT + 2


def test_a_hello_from_a_predictable_routing_id_is_refused() -> None:
    state, _ = core()
    state.handle(b"\x00k\x8bEg", protocol.encode_hello(Role.CLIENT, 1))
    ((error,),) = [sends_of(state)]
    assert error.code is ErrorCode.REFUSED and "new_peer_id" in error.text
    assert state.counters["refused"] == 1 and list(state.clients) == [KEPT]


def test_a_bug_in_a_handler_is_counted_and_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, _ = core()
    c = client(state)
    state.take_sends()

    def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(state._handlers, protocol.MsgType.STATS, broken)
    state.handle(c, protocol.encode_stats_request())
    ((line,),) = [sends_of(state, Log)]
    assert line.level == "error" and isinstance(line.fields["exc_info"], RuntimeError)
    assert state.counters["internal_errors"] == 1


def test_every_counter_is_there_from_the_start_and_no_other_ever_appears() -> None:
    state, clock = core(max_queued=2)
    keys_before = set(state.stats())
    assert set(state.counters) == set(COUNTERS)
    w = worker(state, capacity=1)
    c = client(state)
    submit(state, c, range(1, 5))
    state.take_sends()
    task = next(iter(state.workers[w].running.values()))
    state.handle(w, protocol.encode_result([(task.id, Status.ERROR, [b"{}"])]))
    state.handle(w, protocol.encode_result([(12345, Status.OK, [])]))
    state.handle(c, protocol.encode_cancel([2, 3]))
    state.handle(protocol.new_peer_id(), [b"junk"])
    clock.now += 100
    state.tick()
    state.take_sends()
    assert set(state.stats()) == keys_before
    assert set(state.counters) == set(COUNTERS)
    with pytest.raises(KeyError):  # a counter not in the list cannot be bumped by mistake
        state.counters["no_such_counter"] += 1


# ---------------------------------------------------------------------------------------------
# Time


def test_tick_beats_to_everyone_and_moves_a_silent_workers_tasks() -> None:
    state, clock = core(liveness=3.0)
    w1 = worker(state, capacity=5)
    c = client(state)
    submit(state, c, range(1, 4))
    state.take_sends()
    clock.now += 2.0
    w2 = worker(state, capacity=5)
    state.take_sends()
    clock.now += 1.5  # w1 silent 3.5 s, w2 1.5 s, the client 3.5 s (it has 15 s)
    state.tick()
    sends = state.take_sends()
    assert sends[0] == SendHeartbeats([w1, w2, c])
    assert any(isinstance(s, Log) and "declared dead" in s.event for s in sends)
    assert tasks_sent(sends) == {w2: [1, 2, 3]}
    assert all(t.attempt == 1 for s in sends if isinstance(s, SendTasks) for t in s.tasks)
    assert SendStarted(c, [1, 2, 3]) in sends
    clock.now += 5 * 3.0
    state.tick()
    assert c not in state.clients


def test_stream_items_after_the_client_left_are_dropped_and_its_running_tasks_stopped() -> None:
    state, _ = core()
    w = worker(state)
    c = client(state)
    submit(state, c, range(1, 2), kind=Kind.STREAM, window=2)
    state.take_sends()
    task = state.by_client[(c, 1)]
    state.handle(c, protocol.encode_disconnect())
    state.handle(w, protocol.encode_items([StreamItem(task.id, 1, False, [b"v"])]))
    assert sends_of(state) == [SendCancel(w, [task.id])]


# ---------------------------------------------------------------------------------------------
# Cancelling is O(1) per task


def test_cancelling_100_000_queued_tasks_in_reverse_order_is_linear() -> None:
    state, _ = core()
    c = client(state)
    n = 100_000
    state.submit(c, [SubmitItem(i, H, Kind.CALL, 0, (), [b"x"]) for i in range(1, n + 1)])
    start = time.process_time()  # CPU time: other processes on the machine do not count
    for i in range(n, 0, -1):  # one CANCEL per future, the last first
        state.cancel(c, (i,))
    elapsed = time.process_time() - start
    print(f"{n} queued cancels in reverse order: {elapsed:.3f} s CPU")
    # Linear is about 10 us a cancel here (each is also recorded in the history); a search of
    # the queue per cancel would take minutes.
    assert elapsed < 3.0, f"{n} cancels took {elapsed:.2f} s (router loop blocked)"
    assert state.stats()["queued"] == 0 and state.counters["cancelled"] == n
    w = worker(state)
    submit(state, c, range(n + 1, n + 2))
    assert tasks_sent(state.take_sends()) == {w: [n + 1]}  # the cancelled ones are skipped


def test_cancelling_through_messages_is_fast_too() -> None:
    state, _ = core()
    c = client(state)
    n = 20_000
    submit(state, c, range(1, n + 1))
    start = time.process_time()
    for i in range(n, 0, -1):
        state.handle(c, protocol.encode_cancel([i]))
    elapsed = time.process_time() - start
    print(f"{n} CANCEL messages through handle(): {elapsed:.3f} s CPU")
    assert elapsed < 1.0, f"{n} CANCEL messages took {elapsed:.2f} s"
    assert state.stats()["queued"] == 0


def test_a_cancelled_suspect_is_skipped_not_searched_for() -> None:
    state, _ = core()
    c = client(state)
    submit(state, c, range(1, 2))
    task = state.by_client[(c, 1)]
    for pid in (1, 2):  # its worker dies twice: it becomes a suspect, to run alone
        state.add_worker(b"w%d" % pid, pid, 1)
        state.take_sends()
        state.remove_worker(b"w%d" % pid)
    assert task.deaths == 2 and task.suspect and state.stats()["queued"] == 1
    state.handle(c, protocol.encode_cancel([1]))
    assert state.stats()["queued"] == 0
    w = worker(state)
    assert tasks_sent(state.take_sends()) == {}
    assert not state.suspects and not state.workers[w].running


def test_tasks_taken_back_from_a_blocked_hub_are_cancelled_there_before_they_go_elsewhere() -> None:
    state, _ = core(blocked_after=2.0)
    w1 = worker(state, capacity=3)
    c = client(state)
    submit(state, c, range(1, 4))
    state.take_sends()
    ids = [state.by_client[(c, i)].id for i in (1, 2, 3)]
    w2 = worker(state, capacity=3)
    state.take_sends()
    # The watchdog: the hub has been blocked 2.5 s and has read only the first task.
    state.handle(w1 + b"/watchdog", protocol.encode_heartbeat(w1, 2500, ids[0]))
    sends = sends_of(state)
    assert [type(s) for s in sends] == [SendCancel, SendTasks, SendStarted]
    assert sends[0] == SendCancel(w1, ids[1:])
    assert tasks_sent(sends) == {w2: [2, 3]}
    assert state.counters["taken_back"] == 2


def test_a_timeout_or_crash_report_counts_only_for_a_worker_of_the_senders_key() -> None:
    keys = Keys({"worker:b": "worker", "worker:other": "worker", "client:a": "client"})
    state, _ = core(keys)
    w = worker(state, user="worker:b")
    c = client(state, user="client:a")
    submit(state, c, range(1, 2))
    state.take_sends()
    task_id = state.by_client[(c, 1)].id
    stranger = protocol.new_peer_id()
    state.handle(stranger, protocol.encode_timeout(w, "1s", [task_id]), "worker:other")
    state.handle(stranger, protocol.encode_crashed(w, [task_id]), "worker:other")
    assert w in state.workers and state.counters["timed_out"] == 0
    node = w + b"/node"
    state.handle(node, protocol.encode_timeout(w, "1s", [task_id]), "worker:b")
    assert w not in state.workers and state.counters["timed_out"] == 1
    ((result,),) = [s.outcomes for s in sends_of(state, SendResults)]
    assert protocol.read_error_summary(result[2][0]).code is FailureCode.TASK_TIMEOUT


def test_a_peer_cut_off_for_reading_too_slowly_loses_its_state_and_is_told_once() -> None:
    state, _ = core()
    w = worker(state)
    c = client(state)
    submit(state, c, range(1, 3))
    state.take_sends()
    state.cut_off(w, "you read too slowly")  # what the server's backlog bound decides
    sends = sends_of(state)
    assert sends[0] == CutOff(w, "you read too slowly")
    assert w not in state.workers and state.counters["peers_cut_off"] == 1
    assert state.stats()["queued"] == 2  # its tasks wait for another worker
    state.handle(w, protocol.encode_result([(1, Status.OK, [])]))
    assert sends_of(state) == []
