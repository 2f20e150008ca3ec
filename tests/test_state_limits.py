"""The router state's bounds and refusals: bytes held, bodies per uploader, dependencies."""

from __future__ import annotations

import hashlib

from squall.protocol import HASH_SIZE, Kind, Status, SubmitItem
from squall.router.state import Limits, RouterState

A, B = b"alice-client", b"bob-client"
W = b"worker"
BODY = b"a cloudpickled closure with a secret in it"
HASH = hashlib.blake2b(BODY, digest_size=HASH_SIZE).digest()


def item(task_id: int, size: int = 10, deps: tuple[int, ...] = (), h: bytes = HASH) -> SubmitItem:
    return SubmitItem(task_id, h, Kind.CALL, 0, deps, [b"x" * size])


def state_with(limits: Limits) -> RouterState:
    state = RouterState(limits=limits)
    for client, pid in ((A, 1), (B, 2)):
        state.add_client(client, pid)
    state.body_arrived(HASH, BODY, A)
    state.body_arrived(HASH, BODY, B)
    return state


def refusals(state: RouterState) -> dict[int, bytes]:
    return {task_id: frames[0] for _, task_id, _, frames in state.take_decided()}


def test_a_client_cannot_hold_more_argument_bytes_than_its_limit() -> None:
    state = state_with(Limits(client_bytes=1000, held_bytes=10_000))
    assert state.submit(A, [item(i, 300) for i in range(1, 5)]) == 3
    refused = refusals(state)
    assert list(refused) == [4] and b"--max-client-bytes" in refused[4]
    assert state.bytes_by_client[A] == 900 and state.held_bytes == 900
    # Another client has its own share.
    assert state.submit(B, [item(1, 900)]) == 1
    # An outcome gives the bytes back.
    state.add_worker(W, 10, 100)
    state.dispatch()
    task = state.by_client[(A, 1)]
    state.complete(W, task.id, Status.OK, [b"result"])
    assert state.bytes_by_client[A] == 600
    assert state.submit(A, [item(5, 300)]) == 1


def test_all_clients_together_cannot_pass_the_router_limit() -> None:
    state = state_with(Limits(client_bytes=1000, held_bytes=1500))
    assert state.submit(A, [item(1, 900)]) == 1
    assert state.submit(B, [item(1, 900)]) == 0
    assert b"--max-held-bytes" in refusals(state)[1]
    state.remove_client(A)  # its queued tasks go, and their bytes with them
    assert state.held_bytes == 0
    assert state.submit(B, [item(1, 900)]) == 1


def test_recent_outcomes_are_bounded_in_bytes() -> None:
    state = state_with(Limits(recent_bytes=10_000))
    state.add_worker(W, 10, 1000)
    state.submit(A, [item(i) for i in range(1, 101)])
    state.dispatch()
    for i in range(1, 101):
        state.complete(W, state.by_client[(A, i)].id, Status.OK, [b"r" * 1000])
    assert state.recent_bytes <= 10_000
    assert len(state.recent) == 10
    assert (A, 100) in state.recent and (A, 1) not in state.recent


def test_a_task_may_only_name_a_body_its_own_client_uploaded() -> None:
    state = RouterState()
    state.add_client(A, 1)
    state.add_client(B, 2)
    state.body_arrived(HASH, BODY, B)  # bob's closure, cached in the router
    assert state.submit(A, [item(1)]) == 0  # alice knows the hash, not the body
    assert b"never uploaded by this client" in refusals(state)[1]
    assert state.submit(B, [item(1)]) == 1
    state.body_arrived(HASH, BODY, A)  # sending the body itself proves she has it
    assert state.submit(A, [item(2)]) == 1


def test_clients_of_one_key_share_their_uploads() -> None:
    state = RouterState()
    state.add_client(A, 1, scope="client:alicekey")
    state.add_client(B, 2, scope="client:alicekey")
    state.body_arrived(HASH, BODY, A)
    assert state.submit(B, [item(1)]) == 1


def test_a_refused_body_fails_its_tasks_with_the_reason() -> None:
    state = RouterState()
    state.add_client(A, 1)
    state.refuse_body(A, HASH, "the function's body is too big")
    assert state.submit(A, [item(1)]) == 0
    assert b"too big" in refusals(state)[1]


def test_a_task_cannot_depend_on_itself_or_a_later_task() -> None:
    state = state_with(Limits())
    assert state.submit(A, [item(5, deps=(5,)), item(6, deps=(9,)), item(7, deps=(5,))]) == 1
    refused = refusals(state)
    assert sorted(refused) == [5, 6] and b"submitted before it" in refused[5]
    # Task 7 depends on 5, which was refused: it fails as a dependency, it does not hang.
    dependent = state.by_client[(A, 7)]
    assert dependent.waiting == 0 and dependent.deps is not None
    assert dependent.deps[0] is not None and dependent.deps[0][0] == Status.ERROR


def test_a_worker_cannot_claim_unbounded_capacity() -> None:
    state = RouterState(limits=Limits(max_capacity=5000))
    state.add_worker(W, 10, 2**32 - 1)
    assert state.workers[W].capacity == 5000
    state.set_capacity(W, 2**31)
    assert state.workers[W].capacity == 5000


def test_a_bad_body_answers_the_waiting_workers() -> None:
    state = state_with(Limits())
    state.add_worker(W, 10, 10)
    state.submit(A, [item(1)])
    state.dispatch()
    state.bodies = type(state.bodies)()  # evicted meanwhile
    assert state.body_for(W, HASH) == (None, A)
    assert state.body_arrived(HASH, b"", A) == ([W], False)
    assert state.body_waiters == {}


def test_a_client_restricted_to_a_group_runs_only_on_its_workers() -> None:
    state = RouterState()
    state.add_client(A, 1, group="trusted")
    state.add_client(B, 2)
    for client in (A, B):
        state.body_arrived(HASH, BODY, client)
    state.add_worker(b"other", 10, 100)
    state.submit(A, [item(i) for i in range(1, 4)])
    state.submit(B, [item(1)])
    plan = state.dispatch()
    assert [(w.peer, [(t.client, t.client_task_id) for t in batch]) for w, batch in plan] == [
        (b"other", [(B, 1)])
    ]
    assert state.stats()["queued"] == 3  # alice's wait for a trusted worker
    state.add_worker(b"trusted-1", 11, 2, group="trusted")
    plan = state.dispatch()
    assert [(w.peer, len(batch)) for w, batch in plan] == [(b"trusted-1", 2)]
    # Its worker dies: the tasks go back to the group's queue, not to anyone.
    state.remove_worker(b"trusted-1")
    assert state.dispatch() == []
    state.add_worker(b"trusted-2", 12, 10, group="trusted")
    assert {w.peer for w, _ in state.dispatch()} == {b"trusted-2"}
    assert state.stats()["queued"] == 0
