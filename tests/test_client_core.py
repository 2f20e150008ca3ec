"""The client's connection state machine, without sockets: ClientCore driven by a fake clock.

Each test plays the router: it hands the core messages (``receive``) and the passing of time
(``tick``), and checks the instructions that come back (what to send, what to deliver), as
tests/test_state.py does for the router's scheduling.
"""

from __future__ import annotations

import concurrent.futures
import os

import pytest

import squall
from squall import protocol, serialization
from squall.client._core import Call, ClientCore, Pending, Step
from squall.protocol import ErrorCode, Kind, MsgType, Role, Status

BODY = b"a cloudpickled function"
HASH = protocol.function_hash(BODY)
OTHER_BODY = b"another function"
OTHER_HASH = protocol.function_hash(OTHER_BODY)
ADDRESS = "tcp://127.0.0.1:5555"


def types(messages: list[list[object]]) -> list[MsgType]:
    return [protocol.parse_header([bytes(m[0])])[0] for m in messages]  # type: ignore[arg-type]


def carry_out(step: Step) -> list[list[object]]:
    """What a driver does with a step: deliver, and return what it would send."""
    step.deliver()
    return step.send


def connected(interval: float = 1.0, clock: float = 0.0) -> ClientCore:
    core = ClientCore()
    core.open(ADDRESS, clock, os.getpid())
    carry_out(core.receive(protocol.encode_welcome(interval, 1, epoch=7), clock))
    return core


def submit(core: ClientCore, n: int, body: bytes = BODY) -> list[squall.Future[object]]:
    futures: list[squall.Future[object]] = [squall.Future() for _ in range(n)]
    core.add(protocol.function_hash(body), body, [Call([b"args"], f) for f in futures])
    return futures


def stream(core: ClientCore) -> squall.Stream[object]:
    acks: list[object] = []
    s: squall.Stream[object] = squall.Stream(8, acks.append)
    core.add(HASH, BODY, [Call([b"args"], s, Kind.STREAM, 8)])
    return s


def result(task_id: int, value: object, status: int = Status.OK) -> list[object]:
    return protocol.encode_result([(task_id, status, serialization.dumps(value))])


def submitted_ids(messages: list[list[object]]) -> list[int]:
    ids = []
    for m in messages:
        type_, body = protocol.parse_header([bytes(m[0])])  # type: ignore[arg-type]
        if type_ is MsgType.SUBMIT:
            ids += [item.task_id for item in protocol.decode_submit(body, m[1:])]
    return ids


# -- handshake ---------------------------------------------------------------------------------


def test_hello_then_welcome_then_heartbeats_at_the_routers_pace() -> None:
    core = ClientCore()
    sent = carry_out(core.open(ADDRESS, 0.0, 4242, group="gpu"))
    assert types(sent) == [MsgType.HELLO]
    hello = protocol.decode_hello(protocol.parse_header([sent[0][0]])[1], sent[0][1:])
    assert (hello.role, hello.pid, hello.group) == (Role.CLIENT, 4242, "gpu")
    assert not core.settled
    assert carry_out(core.tick(1.0)) == []  # no heartbeat before the router answered
    carry_out(core.receive(protocol.encode_welcome(0.5, 3), 1.2))
    assert core.connected and core.settled and core.error is None
    assert core.liveness == 2.5  # five of the router's intervals
    assert types(carry_out(core.tick(1.3))) == [MsgType.HEARTBEAT]
    assert carry_out(core.tick(1.5)) == []  # at most one per liveness / 3
    assert types(carry_out(core.tick(2.2))) == [MsgType.HEARTBEAT]


def test_a_router_that_never_answers_gets_hello_again_once_per_third_of_liveness() -> None:
    core = ClientCore()
    carry_out(core.open(ADDRESS, 0.0, 1))
    assert carry_out(core.tick(4.9)) == []
    assert types(carry_out(core.tick(5.1))) == [MsgType.HELLO]
    assert core.lost and not core.settled
    assert carry_out(core.tick(6.0)) == []
    assert types(carry_out(core.tick(6.8))) == [MsgType.HELLO]


def test_refused_hello_settles_the_start_with_the_routers_reason() -> None:
    core = ClientCore()
    carry_out(core.open(ADDRESS, 0.0, 1))
    future = submit(core, 1)[0]
    carry_out(core.receive(protocol.encode_error(ErrorCode.REFUSED, "no such group"), 0.1))
    assert core.settled and not core.connected
    assert isinstance(core.error, squall.SquallError) and "no such group" in str(core.error)
    assert not future.done()  # the executor's start raises; closing fails what is pending


def test_a_refused_key_fails_everything_at_once() -> None:
    core = ClientCore()
    carry_out(core.open(ADDRESS, 0.0, 1, key="alice"))
    futures = submit(core, 3)
    carry_out(core.handshake_failed(True, "400"))
    assert isinstance(core.error, squall.Refused) and "'alice' refused" in str(core.error)
    assert core.settled and not core.pending
    for future in futures:
        with pytest.raises(squall.Refused):
            future.result(0)
    carry_out(core.handshake_failed(False))
    assert "wrong router.key" in str(core.error)


# -- liveness ----------------------------------------------------------------------------------


def test_a_silent_router_is_lost_after_liveness_and_said_hello_to_until_it_answers() -> None:
    core = connected(interval=1.0)  # liveness 5 s
    assert types(carry_out(core.tick(2.0))) == [MsgType.HEARTBEAT]
    assert core.silent_for(4.0) == 0.0
    assert types(carry_out(core.tick(5.1))) == [MsgType.HELLO]
    assert core.lost and core.silent_for(8.0) == 8.0
    # Heartbeats go on between the HELLOs (a restarted router answers one UNKNOWN_PEER)
    assert MsgType.HELLO not in types(carry_out(core.tick(6.0)))
    assert types(carry_out(core.tick(6.8))) == [MsgType.HELLO]


def test_anything_heard_keeps_the_router_alive() -> None:
    core = connected(interval=1.0)
    future = submit(core, 1)[0]
    core.take_outgoing()
    carry_out(core.receive(protocol.encode_heartbeat(), 4.0))
    assert types(carry_out(core.tick(8.0))) == [MsgType.HEARTBEAT]  # 4 s since heard: alive
    carry_out(core.receive(result(future.task_id, 1), 12.0))
    assert not core.lost


def test_a_driver_that_could_not_run_reads_before_it_judges() -> None:
    # The driver stalled 10 s (a caller held the GIL); the router talked meanwhile. Reading
    # first (receive, then tick, as the drivers do), the router is not taken for lost.
    core = connected(interval=1.0)
    carry_out(core.receive(protocol.encode_heartbeat(), 10.0))
    assert types(carry_out(core.tick(10.0))) == [MsgType.HEARTBEAT]
    assert not core.lost


# -- reconnect and resubmit --------------------------------------------------------------------


def test_a_restarted_router_gets_every_unfinished_task_again_bodies_first() -> None:
    core = connected()
    first = submit(core, 3)
    second = submit(core, 2, OTHER_BODY)
    assert types(core.take_outgoing()) == [MsgType.FN_BODY, MsgType.FN_BODY, MsgType.SUBMIT]
    carry_out(core.receive(result(first[1].task_id, "done"), 1.0))
    carry_out(core.tick(7.0))  # silent past liveness: lost
    assert core.lost
    carry_out(core.receive(protocol.encode_welcome(1.0, 1, epoch=8, resumed=False), 7.5))
    assert not core.lost
    again = core.take_outgoing()
    assert types(again) == [MsgType.FN_BODY, MsgType.FN_BODY, MsgType.SUBMIT]
    expected = [first[0].task_id, first[2].task_id, second[0].task_id, second[1].task_id]
    assert submitted_ids(again) == expected
    assert first[1].result(0) == "done"
    assert all(not f.done() for f in (first[0], first[2], *second))


def test_a_router_that_kept_our_session_gets_nothing_again() -> None:
    core = connected()
    futures = submit(core, 2)
    core.take_outgoing()
    carry_out(core.tick(7.0))
    carry_out(core.receive(protocol.encode_welcome(1.0, 1, epoch=7, resumed=True), 8.0))
    assert not core.lost
    assert core.take_outgoing() == []  # running them again would run finished ones twice
    assert all(f.task_id in core.pending for f in futures)


def test_unknown_peer_means_hello_now_then_resubmit() -> None:
    core = connected()
    future = submit(core, 1)[0]
    core.take_outgoing()
    carry_out(core.tick(1.0))  # a heartbeat went out just now
    carry_out(core.receive(protocol.encode_error(ErrorCode.UNKNOWN_PEER, "who?"), 1.1))
    assert core.lost
    assert types(carry_out(core.tick(1.1))) == [MsgType.HELLO]  # at once, not in a third
    carry_out(core.receive(protocol.encode_welcome(1.0, 1, epoch=9), 1.2))
    assert submitted_ids(core.take_outgoing()) == [future.task_id]


def test_a_router_saying_goodbye_is_lost_until_it_welcomes_again() -> None:
    core = connected()
    carry_out(core.receive(protocol.encode_disconnect(), 1.0))
    assert core.lost
    assert types(carry_out(core.tick(1.0))) == [MsgType.HELLO]


def test_a_stream_that_delivered_values_fails_rather_than_repeat_them() -> None:
    core = connected()
    fresh, running = stream(core), stream(core)
    core.take_outgoing()
    item = protocol.StreamItem(running.task_id, 1, False, serialization.dumps(1))
    carry_out(core.receive(protocol.encode_items([item]), 0.5))
    assert running.received == 1
    carry_out(core.tick(7.0))
    carry_out(core.receive(protocol.encode_welcome(1.0, 1, epoch=8), 7.5))
    assert submitted_ids(core.take_outgoing()) == [fresh.task_id]
    assert next(running) == 1
    with pytest.raises(squall.WorkerLost, match="restarted while the stream was running"):
        next(running)


def test_withdrawals_asked_of_a_lost_router_are_answered_not_cancelled() -> None:
    core = connected()
    future = submit(core, 1)[0]
    request, _ = core.withdraw([future])
    assert request is not None
    core.take_outgoing()
    carry_out(core.tick(7.0))
    carry_out(core.receive(protocol.encode_welcome(1.0, 1, epoch=8), 7.5))
    assert request.answered.is_set() and not future.cancelled()


# -- error replies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [(ErrorCode.CUT_OFF, squall.Refused), (ErrorCode.VERSION, squall.ProtocolError)],
)
def test_cut_off_or_another_version_fails_every_pending_task(
    code: ErrorCode, error: type[Exception]
) -> None:
    core = connected()
    futures = submit(core, 2)
    carry_out(core.receive(protocol.encode_error(code, "go away"), 1.0))
    assert isinstance(core.error, error) and "go away" in str(core.error)
    assert not core.pending
    for future in futures:
        with pytest.raises(error, match="go away"):
            future.result(0)


def test_a_refused_message_after_the_welcome_ends_nothing() -> None:
    core = connected()
    future = submit(core, 1)[0]
    carry_out(core.receive(protocol.encode_error(ErrorCode.REFUSED, "that body"), 1.0))
    carry_out(core.receive(protocol.encode_error(ErrorCode.BAD_MESSAGE, "garbled"), 1.0))
    assert core.error is None and not future.done()


def test_a_malformed_message_is_refused_by_the_core_and_changes_nothing() -> None:
    core = connected()
    with pytest.raises(squall.ProtocolError):
        core.receive([b"XX\x03\x05"], 1.0)
    with pytest.raises(squall.ProtocolError):
        core.receive([protocol.encode_result([(1, 0, [b"x"])])[0]], 1.0)  # frames missing


# -- outcomes, answers -------------------------------------------------------------------------


def test_results_resolve_their_futures_and_the_body_stays_fetchable() -> None:
    core = connected()
    futures = submit(core, 2)
    assert isinstance(core.pending[futures[0].task_id], Pending)
    core.take_outgoing()
    started = core.receive(protocol.encode_started([futures[0].task_id]), 0.2)
    assert started.started == [futures[0]]
    carry_out(started)
    assert futures[0].running()
    step = core.receive(result(futures[0].task_id, {"a": 1}), 0.3)
    assert [(t, r.status) for t, r in step.results] == [(futures[0], Status.OK)]
    assert not futures[0].done()  # delivered by the driver, outside the lock
    carry_out(step)
    assert futures[0].result(0) == {"a": 1}
    assert carry_out(core.receive(result(12345, "not ours"), 0.4)) == []
    carry_out(core.receive(result(futures[1].task_id, 2), 0.5))
    assert not core.pending
    answer = carry_out(core.receive(protocol.encode_fn_fetch(HASH), 0.6))
    assert answer == [protocol.encode_fn_body(HASH, BODY)]
    assert carry_out(core.receive(protocol.encode_fn_fetch(OTHER_HASH), 0.6)) == [
        protocol.encode_fn_body(OTHER_HASH, b"")
    ]


def test_stats_answers_go_to_their_askers_in_order_and_skip_one_given_up() -> None:
    core = connected()
    gave_up: concurrent.futures.Future[dict[str, object]] = concurrent.futures.Future()
    waiting: concurrent.futures.Future[dict[str, object]] = concurrent.futures.Future()
    core.ask_stats(gave_up)
    core.ask_stats(waiting)
    assert types(core.take_outgoing()) == [MsgType.STATS, MsgType.STATS]
    gave_up.cancel()
    carry_out(core.receive(protocol.encode_stats({"workers": 1}), 1.0))
    assert not waiting.done()  # the late reply was the first asker's
    carry_out(core.receive(protocol.encode_stats({"workers": 2}), 1.1))
    assert waiting.result(0) == {"workers": 2}
    carry_out(core.receive(protocol.encode_stats({"workers": 3}), 1.2))  # nobody asked: dropped


def test_a_withdrawn_task_is_cancelled_before_its_caller_hears_the_answer() -> None:
    core = connected()
    kept, dropped = submit(core, 2)
    request, _ = core.withdraw([kept, dropped])
    assert request is not None
    seen = []
    request.on_answer = lambda: seen.append((kept.cancelled(), dropped.cancelled()))
    outgoing = core.take_outgoing()
    assert types(outgoing) == [MsgType.FN_BODY, MsgType.SUBMIT, MsgType.WITHDRAW]  # after it
    answer = [(kept.task_id, False), (dropped.task_id, True)]
    carry_out(core.receive(protocol.encode_withdraw(answer), 1.0))
    assert seen == [(False, True)] and request.answered.is_set()
    assert dropped.task_id not in core.pending and kept.task_id in core.pending
    assert core.withdraw([dropped]) == (None, False)  # done: no round trip


def test_control_messages_follow_the_submits_they_name() -> None:
    core = connected()
    future = submit(core, 1)[0]
    core.post(protocol.encode_cancel([future.task_id]))
    assert types(core.take_outgoing()) == [MsgType.FN_BODY, MsgType.SUBMIT, MsgType.CANCEL]
    assert core.take_outgoing() == []
