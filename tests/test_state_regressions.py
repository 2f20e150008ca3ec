"""Router-state edge cases found in review: cancelled dependencies, duplicates, mass cancels."""

from __future__ import annotations

import time

from squall import protocol
from squall.protocol import Kind, SubmitItem
from squall.router.state import RouterState

H = b"h" * protocol.HASH_SIZE
C = b"client"
W = b"worker"


def item(task_id: int, deps: tuple[int, ...] = ()) -> SubmitItem:
    return SubmitItem(task_id, H, Kind.CALL, 0, deps, [b"x"])


def test_dependent_of_a_cancelled_running_task_resolves_when_its_worker_dies() -> None:
    s = RouterState()
    s.add_client(C, 1)
    s.note_upload(C, H)
    s.add_worker(W, 2, 10)
    s.submit(C, [item(1)])
    s.dispatch()  # task 1 runs on W
    s.submit(C, [item(2, deps=(1,))])  # task 2 waits for task 1
    assert s.cancel(C, [1]) == {W: [s.by_client[(C, 1)].id]}  # interrupt: stop sent to W
    s.remove_worker(W)  # W dies before it answers the CANCEL
    # task 2 must get an outcome (DependencyFailed or run): it is neither queued nor failed
    assert s.queue or s.take_decided(), "dependent task is stranded forever"


def test_a_duplicate_submit_of_a_known_task_is_not_run_twice() -> None:
    """What a client's resubmit_all() does while the router still has its tasks."""
    s = RouterState()
    s.add_client(C, 1)
    s.note_upload(C, H)
    s.add_worker(W, 2, 10)
    s.submit(C, [item(1)])
    s.add_client(C, 1)
    s.note_upload(C, H)  # HELLO again (client thought the router was gone)
    s.submit(C, [item(1)])  # resubmit_all
    dispatched = [t for _, batch in s.dispatch() for t in batch]
    assert len(dispatched) == 1, f"client task 1 dispatched {len(dispatched)} times"


def test_cancelling_many_queued_tasks_one_by_one_is_not_quadratic() -> None:
    s = RouterState()
    s.add_client(C, 1)
    s.note_upload(C, H)
    n = 20_000  # (5,000 did not show it: deque.remove made 20,000 take 2.5 s)
    s.submit(C, [item(i) for i in range(1, n + 1)])
    start = time.process_time()
    for i in range(n, 0, -1):  # _as_done/_in_order cancel each leftover future: one CANCEL each
        s.cancel(C, [i])
    elapsed = time.process_time() - start
    assert elapsed < 0.5, f"{n} cancels took {elapsed:.1f} s (router loop blocked)"
