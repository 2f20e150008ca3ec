"""Pure tests of the router's scheduling state: no sockets, a fake clock."""

from __future__ import annotations

import hashlib

from squall.protocol import HASH_SIZE, Kind, SubmitItem
from squall.router.state import BodyCache, RouterState, Task

C1, C2 = b"client-1", b"client-2"
W1, W2, W3 = b"worker-1", b"worker-2", b"worker-3"


def fn_hash(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=HASH_SIZE).digest()


BODY = b"cloudpickled function body"
HASH = fn_hash(BODY)
OTHER_BODY = b"another function"
OTHER_HASH = fn_hash(OTHER_BODY)


def items(first: int, n: int, h: bytes = HASH) -> list[SubmitItem]:
    return [
        SubmitItem(i, h, Kind.CALL, 0, (), [f"args-{i}".encode()]) for i in range(first, first + n)
    ]


def join(state: RouterState, client: bytes, pid: int) -> None:
    """A client says HELLO and uploads the bodies of the functions these tests submit."""
    state.add_client(client, pid)
    for h in (HASH, OTHER_HASH):
        state.note_upload(client, h)


def make_state(clock: list[float] | None = None, liveness: float = 3.0) -> RouterState:
    if clock is None:
        return RouterState(liveness=liveness)
    return RouterState(liveness=liveness, clock=lambda: clock[0])


def flatten(plan: list[tuple[object, list[Task]]]) -> list[Task]:
    return [task for _, batch in plan for task in batch]


def by_worker(plan: list[tuple[object, list[Task]]]) -> dict[bytes, list[int]]:
    return {worker.peer: [t.client_task_id for t in batch] for worker, batch in plan}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Dispatch


def test_dispatch_is_fifo_per_client_and_fair_between_clients() -> None:
    state = make_state()
    join(state, C1, 1)
    join(state, C2, 2)
    state.submit(C1, items(0, 3))
    state.submit(C2, items(100, 2))
    state.submit(C1, items(3, 2))
    state.add_worker(W1, 10, 100)
    tasks = flatten(state.dispatch())
    # Clients take turns; each client's own tasks keep their order.
    assert [(t.client, t.client_task_id) for t in tasks] == [
        (C1, 0),
        (C2, 100),
        (C1, 1),
        (C2, 101),
        (C1, 2),
        (C1, 3),
        (C1, 4),
    ]
    assert all(t.worker == W1 and t.attempt == 0 for t in tasks)
    assert tasks[0].frames == [b"args-0"]
    assert tasks[0].fn_hash == HASH
    assert state.counters["submitted"] == 7
    assert state.counters["dispatched"] == 7


def test_a_small_batch_does_not_wait_behind_another_clients_backlog() -> None:
    state = make_state()
    join(state, C1, 1)
    join(state, C2, 2)
    state.submit(C1, items(0, 100_000))
    state.submit(C2, items(0, 10))
    state.add_worker(W1, 10, 20)
    tasks = flatten(state.dispatch())
    assert sum(t.client == C2 for t in tasks) == 10  # all of C2's in the first 20 slots


def test_cancelling_many_queued_tasks_is_cheap() -> None:
    import time

    state = make_state()
    join(state, C1, 1)
    state.submit(C1, items(0, 50_000))
    start = time.perf_counter()
    state.cancel(C1, range(49_999, -1, -1))  # last first: the worst case for deque.remove
    assert time.perf_counter() - start < 2.0  # deque.remove per cancel: minutes
    assert len(state.queue) == 0 and state.stats()["queued"] == 0
    state.add_worker(W1, 10, 100)
    assert state.dispatch() == []


def test_fifo_is_kept_across_partial_dispatches() -> None:
    state = make_state()
    join(state, C1, 1)
    state.submit(C1, items(0, 10))
    state.add_worker(W1, 10, 3)
    assert by_worker(state.dispatch()) == {W1: [0, 1, 2]}
    assert state.dispatch() == []  # no free capacity left
    for task_id in list(state.workers[W1].running):
        state.complete(W1, task_id)
    assert by_worker(state.dispatch()) == {W1: [3, 4, 5]}


def test_dispatch_with_empty_queue_is_empty() -> None:
    state = make_state()
    state.add_worker(W1, 10, 4)
    assert state.dispatch() == []
    assert state.counters["dispatched"] == 0


def test_only_workers_with_free_capacity_get_tasks() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 0)  # no capacity at all
    state.add_worker(W2, 20, 2)
    state.add_worker(W3, 30, 1)
    state.submit(C1, items(0, 1))
    state.dispatch()  # W2 (most free) takes it, W3 keeps its single slot
    state.submit(C1, items(1, 10))
    plan = state.dispatch()
    got = by_worker(plan)
    assert W1 not in got
    assert sum(len(v) for v in got.values()) == 2  # exactly the free slots: W2 1, W3 1
    assert {w: len(v) for w, v in got.items()} == {W2: 1, W3: 1}
    for worker in state.workers.values():
        assert len(worker.running) <= worker.capacity
    assert len(state.queue) == 8


def test_burst_smaller_than_capacity_is_split_by_free_capacity() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 100)
    state.add_worker(W2, 20, 300)
    state.submit(C1, items(0, 200))
    plan = state.dispatch()
    sizes = {worker.peer: len(batch) for worker, batch in plan}
    assert sizes == {W2: 150, W1: 50}
    assert len(state.workers[W2].running) == 150
    assert len(state.workers[W1].running) == 50
    assert not state.queue
    # Larger share first, and still FIFO across the split.
    assert [w.peer for w, _ in plan] == [W2, W1]
    assert [t.client_task_id for t in flatten(plan)] == list(range(200))


def test_split_uses_free_not_total_capacity() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 400)
    state.add_worker(W2, 20, 200)
    state.submit(C1, items(0, 300))
    state.dispatch()  # 200 / 100
    # Free is now W1 200, W2 100: the next burst splits 2:1 on free slots.
    state.submit(C1, items(300, 30))
    sizes = {worker.peer: len(batch) for worker, batch in state.dispatch()}
    assert sizes == {W1: 20, W2: 10}


def test_uneven_split_never_exceeds_the_burst_or_any_free_capacity() -> None:
    state = make_state()
    join(state, C1, 1)
    for i, cap in enumerate((7, 5, 3, 1)):
        state.add_worker(bytes([i]), i, cap)
    state.submit(C1, items(0, 11))
    plan = state.dispatch()
    assert sum(len(batch) for _, batch in plan) == 11
    assert not state.queue
    for worker, batch in plan:
        assert 0 < len(batch) <= worker.capacity


def test_queue_waits_without_capacity_and_drains_when_a_slot_frees() -> None:
    state = make_state()
    join(state, C1, 1)
    state.submit(C1, items(0, 3))
    assert state.dispatch() == []  # no workers at all
    state.add_worker(W1, 10, 1)
    first = flatten(state.dispatch())
    assert [t.client_task_id for t in first] == [0]
    assert state.dispatch() == []  # busy
    assert len(state.queue) == 2
    done = state.complete(W1, first[0].id)
    assert done is first[0]
    assert [t.client_task_id for t in flatten(state.dispatch())] == [1]
    assert len(state.queue) == 1


def test_set_capacity_opens_and_closes_slots() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 0)
    state.submit(C1, items(0, 5))
    assert state.dispatch() == []
    state.set_capacity(W1, 3)
    assert by_worker(state.dispatch()) == {W1: [0, 1, 2]}
    state.set_capacity(W1, 1)  # below what is running: nothing new until it drains
    assert state.dispatch() == []
    state.set_capacity(W1, -5)
    assert state.workers[W1].capacity == 0
    state.set_capacity(b"nobody", 10)  # unknown peers are ignored
    assert b"nobody" not in state.workers


def test_complete_returns_task_and_counts() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 5)
    state.submit(C1, items(7, 1))
    (task,) = flatten(state.dispatch())
    assert state.complete(W1, task.id) is task
    assert task.id not in state.tasks
    assert not state.workers[W1].running
    assert state.counters["completed"] == 1
    assert state.counters["stale_results"] == 0


def test_complete_of_unknown_or_stale_task_is_none() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 5)
    state.add_worker(W2, 20, 5)
    state.submit(C1, items(0, 1))
    (task,) = flatten(state.dispatch())
    other = W2 if task.worker == W1 else W1
    assert state.complete(W1, 12345) is None  # never existed
    assert state.complete(other, task.id) is None  # not this worker's task
    assert state.complete(b"ghost", task.id) is None  # unknown worker
    assert state.counters["stale_results"] == 3
    assert state.complete(task.worker, task.id) is task  # type: ignore[arg-type]
    assert state.complete(task.worker, task.id) is None  # type: ignore[arg-type]  # twice
    assert state.counters["stale_results"] == 4
    assert state.counters["completed"] == 1


# ---------------------------------------------------------------------------------------------
# Workers leaving, liveness


def test_remove_worker_requeues_running_tasks_at_the_front() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 3)
    state.submit(C1, items(0, 5))
    running = flatten(state.dispatch())
    assert [t.client_task_id for t in running] == [0, 1, 2]
    assert [t.client_task_id for t in state.queue] == [3, 4]
    requeued = state.remove_worker(W1)
    assert requeued == running
    assert W1 not in state.workers
    assert [t.client_task_id for t in state.queue] == [0, 1, 2, 3, 4]
    assert [t.attempt for t in state.queue] == [1, 1, 1, 0, 0]
    assert all(t.worker is None for t in requeued)
    assert state.counters["redelivered"] == 3
    # The late result of the dead worker is stale; the task is still pending.
    assert state.complete(W1, running[0].id) is None
    assert running[0].id in state.tasks
    # Another worker picks them up first, with the bumped attempt.
    state.add_worker(W2, 20, 10)
    tasks = flatten(state.dispatch())
    assert [(t.client_task_id, t.attempt, t.worker) for t in tasks] == [
        (0, 1, W2),
        (1, 1, W2),
        (2, 1, W2),
        (3, 0, W2),
        (4, 0, W2),
    ]
    assert state.complete(W2, running[0].id) is running[0]


def test_attempt_grows_with_each_redelivery() -> None:
    state = make_state()
    state.max_worker_deaths = 10
    join(state, C1, 1)
    state.submit(C1, items(0, 1))
    for expected in (1, 2, 3):
        state.add_worker(W1, 10, 1)
        state.dispatch()
        (task,) = state.remove_worker(W1)
        assert task.attempt == expected
    assert state.counters["redelivered"] == 3


def test_remove_unknown_worker_is_harmless() -> None:
    state = make_state()
    assert state.remove_worker(b"ghost") == []
    assert state.counters["redelivered"] == 0


def test_hello_from_a_new_process_at_a_known_address_requeues_what_the_old_one_held() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 2)
    state.submit(C1, items(0, 2))
    state.dispatch()
    state.add_worker(W1, 11, 2)
    assert state.workers[W1].pid == 11
    assert not state.workers[W1].running
    assert [t.attempt for t in state.queue] == [1, 1]


def test_hello_again_from_the_same_process_keeps_its_tasks() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 2)
    state.submit(C1, items(0, 2))
    state.dispatch()
    state.add_worker(W1, 10, 5)
    assert len(state.workers[W1].running) == 2 and state.workers[W1].capacity == 5
    assert not state.queue and state.counters["redelivered"] == 0


def test_expired_workers_with_fake_clock() -> None:
    t = [100.0]
    state = make_state(t, liveness=3.0)
    state.add_worker(W1, 10, 1)
    t[0] = 101.0
    state.add_worker(W2, 20, 1)
    assert state.expired_workers() == []
    t[0] = 103.0  # exactly at the edge for W1: not yet
    assert state.expired_workers() == []
    t[0] = 103.5
    assert state.expired_workers() == [W1]
    t[0] = 104.5
    assert sorted(state.expired_workers()) == [W1, W2]


def test_seen_refreshes_liveness() -> None:
    t = [0.0]
    state = make_state(t, liveness=2.0)
    state.add_worker(W1, 10, 1)
    state.add_worker(W2, 20, 1)
    join(state, C1, 1)
    t[0] = 1.5
    state.seen(W1)
    state.seen(C1)
    state.seen(b"stranger")  # unknown peers are ignored
    assert state.workers[W1].last_seen == 1.5
    assert state.clients[C1].last_seen == 1.5
    t[0] = 3.0  # W2 silent for 3 s, W1 for 1.5 s
    assert state.expired_workers() == [W2]
    state.seen(W2)
    assert state.expired_workers() == []
    t[0] = 3.6  # now W1 has been silent for 2.1 s, W2 for 0.6 s
    assert state.expired_workers() == [W1]


# ---------------------------------------------------------------------------------------------
# Clients leaving


def test_remove_client_drops_only_its_queued_tasks() -> None:
    state = make_state()
    join(state, C1, 1)
    join(state, C2, 2)
    state.add_worker(W1, 10, 2)
    state.submit(C1, items(0, 2))  # these two will run
    state.dispatch()
    state.submit(C1, items(2, 3))
    state.submit(C2, items(100, 2))
    state.submit(C1, items(5, 1))
    running = list(state.workers[W1].running.values())
    assert [t.client for t in running] == [C1, C1]
    assert state.remove_client(C1) == 4
    assert C1 not in state.clients
    assert [(t.client, t.client_task_id) for t in state.queue] == [(C2, 100), (C2, 101)]
    assert set(state.tasks) == {t.id for t in running} | {t.id for t in state.queue}
    assert len(state.workers[W1].running) == 2  # running tasks finish


def test_results_for_a_removed_client_are_dropped() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 5)
    state.submit(C1, items(0, 2))
    a, b = flatten(state.dispatch())
    state.remove_client(C1)
    assert state.complete(W1, a.id) is None
    assert a.id not in state.tasks  # forgotten, not leaked
    assert not state.workers[W1].running.get(a.id)
    assert state.counters["stale_results"] == 0
    # Its running tasks are stopped on their worker: nobody wants their outcomes.
    assert state.take_stops() == {W1: [a.id, b.id]}
    join(state, C1, 1)  # the same identity coming back resubmits; the old run is void
    assert state.complete(W1, b.id) is None


def test_remove_unknown_client_drops_nothing() -> None:
    state = make_state()
    join(state, C1, 1)
    state.submit(C1, items(0, 2))
    assert state.remove_client(C2) == 0
    assert len(state.queue) == 2


# ---------------------------------------------------------------------------------------------
# Function bodies


def test_body_for_returns_cached_body() -> None:
    state = make_state()
    state.add_worker(W1, 10, 1)
    assert state.body_arrived(HASH, BODY) == ([], True)
    assert state.body_for(W1, HASH) == (BODY, None)
    assert state.counters["bodies_sent"] == 1
    assert state.body_waiters == {}


def test_body_for_names_the_owning_client_and_registers_the_waiter() -> None:
    state = make_state()
    join(state, C1, 1)
    join(state, C2, 2)
    state.add_worker(W1, 10, 5)
    state.add_worker(W2, 20, 5)
    state.submit(C2, items(0, 1, OTHER_HASH))
    state.submit(C1, items(1, 1, HASH))
    state.set_capacity(W2, 0)
    state.dispatch()  # both run on W1
    assert state.body_for(W1, HASH) == (None, C1)
    assert state.body_for(W1, OTHER_HASH) == (None, C2)
    assert state.body_waiters == {HASH: {W1}, OTHER_HASH: {W1}}
    # W2 runs nothing with that hash: nobody to ask, and it is not registered.
    assert state.body_for(W2, HASH) == (None, None)
    assert state.body_waiters[HASH] == {W1}
    assert state.counters["bodies_sent"] == 0


def test_body_for_with_no_owner_is_none_none() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 1)
    assert state.body_for(W1, HASH) == (None, None)  # nothing running
    assert state.body_for(b"ghost", HASH) == (None, None)  # unknown worker
    state.submit(C1, items(0, 1))
    state.dispatch()
    state.remove_client(C1)
    assert state.body_for(W1, HASH) == (None, None)  # owner gone
    assert state.body_waiters == {}


def test_body_arrived_returns_waiting_workers_and_caches() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 1)
    state.add_worker(W2, 20, 1)
    state.add_worker(W3, 30, 1)
    state.submit(C1, items(0, 3))
    state.dispatch()
    for w in (W1, W2, W3):
        assert state.body_for(w, HASH) == (None, C1)
    state.remove_worker(W3)  # a dead waiter is not answered
    waiting, good = state.body_arrived(HASH, BODY)
    assert good and sorted(waiting) == [W1, W2]
    assert HASH not in state.body_waiters
    assert state.bodies.get(HASH) == BODY
    assert state.counters["bodies_received"] == 1
    assert state.counters["bodies_sent"] == 2
    assert state.body_arrived(HASH, BODY) == ([], True)  # nobody waits any more


def test_body_arrived_rejects_a_body_that_does_not_match_its_hash() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 1)
    state.submit(C1, items(0, 1))
    state.dispatch()
    assert state.body_for(W1, HASH) == (None, C1)
    # The waiting worker is answered (with nothing: it fails the task) rather than left to
    # wait forever for a body that will not come.
    assert state.body_arrived(HASH, OTHER_BODY) == ([W1], False)
    assert state.counters["bad_bodies"] == 1
    assert state.bodies.get(HASH) is None
    assert len(state.bodies) == 0
    assert HASH not in state.body_waiters


def test_stats_reflect_state() -> None:
    state = make_state()
    join(state, C1, 1)
    state.add_worker(W1, 10, 2)
    state.add_worker(W2, 5, 3)
    state.submit(C1, items(0, 7))
    state.set_capacity(W2, 0)
    state.dispatch()
    stats = state.stats()
    assert stats["workers"] == 2
    assert stats["worker_pids"] == [5, 10]
    assert stats["capacity"] == 2
    assert stats["clients"] == 1
    assert stats["queued"] == 5
    assert stats["running"] == 2
    assert stats["submitted"] == 7
    assert stats["dispatched"] == 2


# ---------------------------------------------------------------------------------------------
# BodyCache


def bodies(n: int, size: int = 10) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        body = bytes([i]) * size
        out.append((fn_hash(body), body))
    return out


def test_body_cache_rejects_wrong_hash() -> None:
    cache = BodyCache()
    assert cache.put(HASH, OTHER_BODY) is False
    assert len(cache) == 0
    assert cache.put(HASH, BODY) is True
    assert cache.get(HASH) == BODY
    assert cache.put(HASH, BODY) is True  # already there
    assert len(cache) == 1


def test_body_cache_evicts_least_recently_used_by_count() -> None:
    cache = BodyCache(max_items=3)
    (h0, b0), (h1, b1), (h2, b2), (h3, b3) = bodies(4)
    for h, b in ((h0, b0), (h1, b1), (h2, b2)):
        assert cache.put(h, b)
    assert cache.get(h0) == b0  # h0 is now the most recently used; h1 the least
    assert cache.put(h3, b3)
    assert len(cache) == 3
    assert cache.get(h1) is None
    assert cache.get(h0) == b0
    assert cache.get(h2) == b2
    assert cache.get(h3) == b3


def test_body_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = BodyCache(max_items=100, max_bytes=25)
    (h0, b0), (h1, b1), (h2, b2) = bodies(3, size=10)
    assert cache.put(h0, b0)
    assert cache.put(h1, b1)
    assert cache.get(h0) == b0  # h1 becomes the least recently used
    assert cache.put(h2, b2)  # 30 bytes > 25: one must go
    assert len(cache) == 2
    assert cache.get(h1) is None
    assert cache.get(h0) == b0
    assert cache.get(h2) == b2
    big = b"B" * 24
    assert cache.put(fn_hash(big), big)  # needs both others out
    assert len(cache) == 1
    assert cache.get(fn_hash(big)) == big


def test_body_cache_does_not_keep_a_body_bigger_than_the_whole_cache() -> None:
    cache = BodyCache(max_bytes=25)
    ((h0, b0),) = bodies(1, size=10)
    assert cache.put(h0, b0)
    huge = b"H" * 26
    assert cache.put(fn_hash(huge), huge) is True  # a valid body, just not kept
    assert cache.get(fn_hash(huge)) is None
    assert cache.get(h0) == b0  # nothing was evicted for it


def test_tasks_of_a_departed_client_are_not_run_again() -> None:
    state = make_state()
    join(state, C1, 1)
    join(state, C2, 2)
    state.submit(C1, items(0, 2))
    state.submit(C2, items(10, 2))
    state.add_worker(W1, 10, 100)
    state.dispatch()
    state.remove_client(C1)
    requeued = state.remove_worker(W1)
    assert [t.client for t in requeued] == [C2, C2]
    assert [t.client for t in state.queue] == [C2, C2]
    assert len(state.tasks) == 2


def test_a_body_too_big_to_cache_still_reaches_waiting_workers() -> None:
    state = make_state()
    state.bodies.max_bytes = 5
    join(state, C1, 1)
    state.add_worker(W1, 10, 100)
    state.submit(C1, items(0, 1))
    state.dispatch()
    assert state.body_for(W1, HASH) == (None, C1)
    assert state.body_arrived(HASH, BODY) == ([W1], True)
    assert state.bodies.get(HASH) is None


# ---------------------------------------------------------------------------------------------
# Worker deaths, isolation, drains, time limits, queue bounds


def test_a_task_that_keeps_killing_workers_is_isolated_then_fails() -> None:
    state = make_state()
    join(state, C1, 1)
    state.submit(C1, items(0, 3))  # task 0 is the poison; 1 and 2 share its worker
    state.add_worker(W1, 10, 10)
    state.dispatch()
    state.remove_worker(W1)  # first death: all three come back
    state.add_worker(W1, 11, 10)
    state.dispatch()
    state.remove_worker(W1)  # second death: all three have died twice: suspects now
    assert [t.client_task_id for t in state.suspects] == [0, 1, 2]
    assert state.counters["worker_deaths"] == 2
    # Suspects run alone: one per idle worker, which then takes nothing else.
    for peer, pid in ((W1, 12), (W2, 20), (W3, 30)):
        state.add_worker(peer, pid, 10)
    state.submit(C1, items(10, 5))
    plan = state.dispatch()
    alone = {w.peer: [t.client_task_id for t in b] for w, b in plan if w.isolating is not None}
    assert sorted(alone.values()) == [[0], [1], [2]]
    assert all(state.workers[peer].free == 0 for peer in alone)
    assert {t.client_task_id for t in state.queue} == {10, 11, 12, 13, 14}  # wait for room
    poison_worker = next(peer for peer, ids in alone.items() if ids == [0])
    state.remove_worker(poison_worker)  # third death: it fails, nothing else is hurt
    ((_, failed_id, _, frames),) = state.take_decided()
    assert failed_id == 0
    assert b"WorkerLost" in frames[0] and b"died 3 times" in frames[0]
    assert state.counters["worker_lost"] == 1
    innocent = next(peer for peer, ids in alone.items() if ids == [1])
    assert state.complete(innocent, state.by_client[(C1, 1)].id) is not None
    assert state.workers[innocent].free == 10  # no longer isolating: takes normal work again


def test_a_graceful_drain_hands_tasks_back_without_counting_a_death() -> None:
    state = make_state()
    join(state, C1, 1)
    state.submit(C1, items(0, 2))
    state.add_worker(W1, 10, 10)
    state.dispatch()
    requeued = state.remove_worker(W1, died=False)
    assert [t.deaths for t in requeued] == [0, 0]
    assert state.counters["worker_deaths"] == 0 and len(state.queue) == 2


def test_timed_out_tasks_fail_and_the_rest_go_back() -> None:
    state = make_state()
    join(state, C1, 1)
    state.submit(C1, items(0, 3))
    state.add_worker(W1, 10, 10)
    running = flatten(state.dispatch())
    state.timed_out(W1, [running[0].id], "5 s")
    ((_, task_id, _, frames),) = state.take_decided()
    assert task_id == 0 and b"TaskTimeout" in frames[0]
    assert W1 not in state.workers
    assert [t.client_task_id for t in state.queue] == [1, 2]
    assert all(t.deaths == 0 for t in state.queue)


def test_a_client_cannot_queue_more_than_its_share() -> None:
    state = make_state()
    state.max_queued = 3
    join(state, C1, 1)
    assert state.submit(C1, items(0, 5)) == 3
    refused = state.take_decided()
    assert [task_id for _, task_id, _, _ in refused] == [3, 4]
    assert b"queue for this client is full" in refused[0][3][0]
    state.add_worker(W1, 10, 2)
    state.dispatch()  # two leave the queue: room for two more
    assert state.submit(C1, items(5, 2)) == 2


def test_silent_clients_expire_after_a_longer_window() -> None:
    t = [100.0]
    state = make_state(t, liveness=1.0)
    join(state, C1, 1)
    join(state, C2, 2)
    t[0] += 3.0
    state.seen(C2)
    assert state.expired_clients() == []  # a worker would be dead by now; a client is not
    t[0] += 2.5
    assert state.expired_clients() == [C1]
