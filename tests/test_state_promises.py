"""Router-state decisions behind the promise "only a task whose worker died is run again"."""

from __future__ import annotations

import hashlib

from squall.protocol import HASH_SIZE, Kind, Status, SubmitItem
from squall.router.state import RouterState

C = b"client"
W1, W2 = b"worker-1", b"worker-2"
BODY = b"body"
HASH = hashlib.blake2b(BODY, digest_size=HASH_SIZE).digest()


def item(task_id: int) -> SubmitItem:
    return SubmitItem(task_id, HASH, Kind.CALL, 0, (), [b"x"])


def ready(clock: list[float] | None = None) -> RouterState:
    state = RouterState(liveness=3.0, clock=(lambda: clock[0]) if clock else (lambda: 100.0))
    state.add_client(C, 1)
    state.body_arrived(HASH, BODY, C)
    return state


def test_a_finished_task_submitted_again_gets_its_outcome_not_a_second_run() -> None:
    state = ready()
    state.add_worker(W1, 10, 10)
    state.submit(C, [item(1)])
    (task,) = [t for _, batch in state.dispatch() for t in batch]
    state.complete(W1, task.id, Status.OK, [b"result"])
    assert state.submit(C, [item(1)]) == 0  # the client resubmits after a false alarm
    assert state.take_decided() == [(C, 1, Status.OK, [b"result"])]
    assert state.dispatch() == []


def test_a_paused_router_forgives_its_peers_silence() -> None:
    clock = [100.0]
    state = RouterState(liveness=3.0, clock=lambda: clock[0])
    state.add_client(C, 1)
    state.add_worker(W1, 10, 10)
    clock[0] += 8.0  # SIGSTOP for 8 s: nobody was heard, because nobody was listening
    state.forgive_silence()
    assert state.expired_workers() == [] and state.expired_clients() == []
    clock[0] += 3.5
    assert state.expired_workers() == [W1]  # real silence still counts


def test_a_blocked_hub_gets_nothing_new_and_its_unread_tasks_go_elsewhere() -> None:
    state = ready()
    state.add_worker(W1, 10, 10)
    state.submit(C, [item(i) for i in range(1, 5)])
    sent = sorted(t.id for _, batch in state.dispatch() for t in batch)
    # The hub received the first two, then a task blocked it; two more sit unread.
    taken = state.hub_report(W1, blocked_ms=5000, last_task=sent[1])
    assert taken == sent[2:]
    assert sorted(state.workers[W1].running) == sent[:2]
    state.add_worker(W2, 20, 10)
    state.submit(C, [item(9)])
    plan = state.dispatch()
    assert {w.peer for w, _ in plan} == {W2}  # nothing new for the blocked worker
    moved = [t for _, batch in plan for t in batch]
    assert sorted(t.client_task_id for t in moved) == [3, 4, 9]
    assert all(t.attempt == 0 and t.deaths == 0 for t in moved)
    # Its hub runs again (its own message arrives): it takes work again.
    state.seen(W1)
    state.submit(C, [item(10)])
    assert {w.peer for w, _ in state.dispatch()} == {W1}


def test_a_short_block_changes_nothing() -> None:
    state = ready()
    state.add_worker(W1, 10, 10)
    state.submit(C, [item(1)])
    state.dispatch()
    assert state.hub_report(W1, blocked_ms=500, last_task=0) == []
    assert len(state.workers[W1].running) == 1 and state.workers[W1].free == 9


def test_withdraw_drops_only_what_no_worker_has() -> None:
    state = ready()
    state.add_worker(W1, 10, 1)
    state.submit(C, [item(1), item(2)])
    state.dispatch()  # 1 runs, 2 waits
    assert state.withdraw(C, [1, 2, 77]) == [(1, False), (2, True), (77, False)]
    assert state.stats()["queued"] == 0
    assert (C, 2) not in state.by_client
    assert state.withdraw(C, [2]) == [(2, False)]  # already gone


def test_a_crash_charges_only_the_task_its_node_names() -> None:
    state = ready()
    state.add_worker(W1, 10, 10)
    state.submit(C, [item(i) for i in range(1, 6)])
    running = sorted((t for _, b in state.dispatch() for t in b), key=lambda t: t.id)
    culprit = running[2]
    requeued = state.worker_crashed(W1, [culprit.id])
    assert {t.id for t in requeued} == {t.id for t in running}
    assert culprit.deaths == 1 and all(t.deaths == 0 for t in running if t is not culprit)


def test_a_late_crash_report_refunds_the_neighbours() -> None:
    state = ready()
    state.add_worker(W1, 10, 10)
    state.submit(C, [item(i) for i in range(1, 4)])
    running = [t for _, b in state.dispatch() for t in b]
    state.remove_worker(W1)  # the router noticed first: everyone charged
    assert all(t.deaths == 1 for t in running)
    refunded = state.worker_crashed(W1, [running[0].id])
    assert {t.id for t in refunded} == {t.id for t in running[1:]}
    assert [t.deaths for t in running] == [1, 0, 0]
