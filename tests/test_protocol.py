"""Pure tests of the wire protocol: round trips, header checks, batch checks, a fuzz pass."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from squall import protocol
from squall.errors import ProtocolError, SquallError, VersionMismatch
from squall.protocol import (
    MAGIC,
    VERSION,
    ErrorCode,
    Hello,
    Kind,
    MsgType,
    ResultItem,
    Role,
    Status,
    StreamItem,
    SubmitItem,
    TaskItem,
    Welcome,
)

H1 = bytes(range(16))
H2 = bytes(range(16, 32))

# The wire layouts, written out here rather than taken from the module, so that a layout change
# shows up as a failing test instead of silently moving both ends.
SUBMIT_ROW = "!Q16sBIHHH"  # task id, fn hash, kind, window, n deps, n frames, route bytes
TASK_ROW = "!Q16sBBHIHH"  # task id, fn hash, kind, flags, attempt, window, n deps, n own frames
TASK_DEP = "!BH"  # status, n frames
RESULT_ROW = "!QBH"  # task id, status, n frames
ITEM_ROW = "!QIBH"  # task id, n values, packed, n frames
VALUE_LEN = "!I"  # before each value in a packed ITEM frame
ACK_ROW = "!QI"  # task id, consumed
CANCEL_ROW = "!Q"  # task id


def roundtrip(frames: list[Any], expected_type: MsgType) -> tuple[bytes, list[Any]]:
    """Parse the header of an encoded message; return (header body, payload frames)."""
    type_, body = protocol.parse_header(frames)
    assert type_ is expected_type
    return body, frames[1:]


def prefix(version: int = VERSION, type_: int = MsgType.HEARTBEAT, magic: bytes = MAGIC) -> bytes:
    return struct.pack("!2sBB", magic, version, type_)


def test_wire_numbers_are_stable() -> None:
    # Peers of the same version must agree on these numbers: they are part of the protocol.
    assert [(t.name, t.value) for t in MsgType][-13:] == [
        ("ITEM", 13),
        ("ACK", 14),
        ("CANCEL", 15),
        ("TIMEOUT", 16),
        ("STARTED", 17),
        ("WITHDRAW", 18),
        ("CRASHED", 19),
        ("ENQUEUE", 20),
        ("ENQUEUED", 21),
        ("QUERY", 22),
        ("ANSWER", 23),
        ("EVENTS", 24),
        ("RETRIED", 25),
    ]
    assert {s.name: s.value for s in Status} == {"OK": 0, "ERROR": 1, "CANCELLED": 2}
    assert {k.name: k.value for k in Kind} == {
        "CALL": 0,
        "STREAM": 1,
        "JSON_CALL": 2,
        "JSON_STREAM": 3,
    }


# ---------------------------------------------------------------------------------------------
# Round trips of simple messages


@pytest.mark.parametrize("role", list(Role))
def test_hello_roundtrip(role: Role) -> None:
    body, payload = roundtrip(protocol.encode_hello(role, 4242, 300), MsgType.HELLO)
    assert payload == []
    hello = protocol.decode_hello(body)
    queues = (protocol.DEFAULT_QUEUE,) if role is Role.WORKER else ()
    assert hello == Hello(role, 4242, 300, queues=queues)
    assert hello.role is role


def test_a_worker_hello_names_its_queues() -> None:
    frames = protocol.encode_hello(Role.WORKER, 1, 10, queues=["emails", "default"])
    body, payload = roundtrip(frames, MsgType.HELLO)
    assert protocol.decode_hello(body, payload).queues == ("emails", "default")
    for bad in (b"", b"a b", b"x" * 65, b",".join([b"q"] * 65)):
        with pytest.raises(ProtocolError, match="queue"):
            protocol.decode_hello(body, [bad])


def test_routes_travel_with_submits_and_enqueues() -> None:
    route = protocol.Route("emails", -3, 1_900_000_000.5, 1_900_000_100.0)
    items = [
        SubmitItem(1, b"h" * 16, 0, 0, (), [b"a"], route=route),
        SubmitItem(2, b"h" * 16, 0, 0, (1,), [b"b"]),
        SubmitItem(3, b"h" * 16, 0, 0, (), [b"c"], route=protocol.Route(priority=7)),
    ]
    body, payload = roundtrip(protocol.encode_submit(items), MsgType.SUBMIT)
    decoded = protocol.decode_submit(body, payload)
    assert [i.route for i in decoded] == [route, None, protocol.Route(priority=7)]
    assert decoded[1].deps == (1,)
    kept = [i._replace(key=bytes(16), name="f", deps=()) for i in items]
    body, payload = roundtrip(protocol.encode_enqueue(kept), MsgType.ENQUEUE)
    assert [i.route for i in protocol.decode_enqueue(body, payload)] == [i.route for i in items]
    bad = protocol.encode_submit([items[0]._replace(route=route._replace(queue="no way"))])
    body, payload = roundtrip(bad, MsgType.SUBMIT)
    with pytest.raises(ProtocolError, match="queue name"):
        protocol.decode_submit(body, payload)


def test_hello_capacity_defaults_to_zero() -> None:
    body, _ = roundtrip(protocol.encode_hello(Role.CLIENT, 7), MsgType.HELLO)
    assert protocol.decode_hello(body) == Hello(Role.CLIENT, 7, 0)


def test_welcome_roundtrip() -> None:
    body, payload = roundtrip(protocol.encode_welcome(0.25, 17), MsgType.WELCOME)
    assert payload == []
    assert protocol.decode_welcome(body) == Welcome(0.25, 17)


def test_fn_fetch_roundtrip() -> None:
    body, payload = roundtrip(protocol.encode_fn_fetch(H1), MsgType.FN_FETCH)
    assert payload == []
    fn_hash = protocol.decode_fn_fetch(body)
    assert fn_hash == H1
    assert type(fn_hash) is bytes


@pytest.mark.parametrize("fn_body", [b"cloudpickled function", b""])
def test_fn_body_roundtrip(fn_body: bytes) -> None:
    body, payload = roundtrip(protocol.encode_fn_body(H2, fn_body), MsgType.FN_BODY)
    assert protocol.decode_fn_body(body, payload) == (H2, fn_body, "")


def test_fn_body_may_name_its_function() -> None:
    frames = protocol.encode_fn_body(H2, b"body", "app.tasks.<locals>.resize")
    body, payload = roundtrip(frames, MsgType.FN_BODY)
    assert protocol.decode_fn_body(body, payload) == (H2, b"body", "app.tasks.<locals>.resize")
    with pytest.raises(ProtocolError, match="at most 255 bytes"):
        protocol.decode_fn_body(body, [b"body", b"n" * 256])


@pytest.mark.parametrize("n_payload", [0, 3])
def test_fn_body_wants_one_or_two_payload_frames(n_payload: int) -> None:
    body, _ = roundtrip(protocol.encode_fn_body(H2, b"x"), MsgType.FN_BODY)
    with pytest.raises(ProtocolError, match="expected 1 or 2 payload frames"):
        protocol.decode_fn_body(body, [b"x"] * n_payload)


@pytest.mark.parametrize("n", [0, 1, 1000, 2**32 - 1])
def test_credit_roundtrip(n: int) -> None:
    body, payload = roundtrip(protocol.encode_credit(n), MsgType.CREDIT)
    assert payload == []
    assert protocol.decode_credit(body) == n


@pytest.mark.parametrize(
    ("encode", "type_"),
    [
        (protocol.encode_heartbeat, MsgType.HEARTBEAT),
        (protocol.encode_disconnect, MsgType.DISCONNECT),
        (protocol.encode_stats_request, MsgType.STATS),
    ],
)
def test_empty_messages_roundtrip(encode: Callable[[], list[Any]], type_: MsgType) -> None:
    frames = encode()
    assert len(frames) == 1
    body, payload = roundtrip(frames, type_)
    assert body == b""
    assert payload == []


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_roundtrip(code: ErrorCode) -> None:
    body, payload = roundtrip(protocol.encode_error(code, "nope: ünïcode"), MsgType.ERROR)
    assert payload == []
    assert protocol.decode_error(body) == (code, "nope: ünïcode")


def test_error_reason_is_capped() -> None:
    body, _ = roundtrip(protocol.encode_error(ErrorCode.REFUSED, "x" * 10_000), MsgType.ERROR)
    code, reason = protocol.decode_error(body)
    assert code == ErrorCode.REFUSED
    assert reason == "x" * 4096


def test_error_without_code_is_refused() -> None:
    with pytest.raises(ProtocolError, match="no code"):
        protocol.decode_error(b"")


def test_stats_roundtrip() -> None:
    stats = {"workers": 3, "worker_pids": [1, 2, 3], "queued": 0, "ratio": 0.5}
    body, payload = roundtrip(protocol.encode_stats(stats), MsgType.STATS)
    assert payload == []
    assert protocol.decode_stats(body) == stats


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe\x00garbage"])
def test_stats_rejects_bad_json_and_non_objects(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="STATS"):
        protocol.decode_stats(body)


def test_stats_json_is_sorted_and_plain() -> None:
    (frame,) = protocol.encode_stats({"b": 1, "a": 2})
    _, body = protocol.parse_header([frame])
    assert body == json.dumps({"a": 2, "b": 1}, sort_keys=True).encode()


# ---------------------------------------------------------------------------------------------
# Error outcomes


def test_error_outcome_layout_and_defaults() -> None:
    frames = protocol.error_outcome("builtins.ValueError", "bad value")
    assert len(frames) == 2
    assert json.loads(frames[0]) == {
        "code": 0,
        "type": "builtins.ValueError",
        "message": "bad value",
        "traceback": "",
    }
    assert frames[1] == b""  # no pickle: the router's own errors travel like this


@pytest.mark.parametrize("code", list(protocol.FailureCode))
def test_failure_outcome_carries_its_code_and_the_class_name(code: protocol.FailureCode) -> None:
    frames = protocol.failure_outcome(code, "why", function="mod.fn")
    summary = protocol.read_error_summary(frames[0])
    assert summary.code is code and summary.message == "why" and summary.function == "mod.fn"
    # The type text is the class name Python callers get, for people and other languages.
    assert summary.type.startswith("squall.") and "_" not in summary.type
    assert frames[1:] == [b""]


def test_an_unknown_failure_code_reads_as_raised() -> None:
    frame = json.dumps({"code": 999, "type": "T", "message": "m", "traceback": ""}).encode()
    assert protocol.read_error_summary(frame).code is protocol.FailureCode.RAISED


def test_a_summary_without_a_code_reads_as_raised() -> None:
    frame = json.dumps({"type": "T", "message": "m", "traceback": ""}).encode()
    assert protocol.read_error_summary(frame).code is protocol.FailureCode.RAISED


def test_error_outcome_keeps_pickled_frames_in_order_and_untouched() -> None:
    pickled: list[Any] = [b"pickle", memoryview(b"oob1"), bytearray(b"oob2")]
    frames = protocol.error_outcome("mod.Err", "m", "Traceback ...", pickled)
    assert len(frames) == 4
    assert all(a is b for a, b in zip(frames[1:], pickled, strict=True))


@pytest.mark.parametrize(
    ("type_name", "message", "traceback"),
    [
        ("builtins.KeyError", "'k'", 'Traceback (most recent call last):\n  File "x"\nKeyError'),
        ("squall.errors.WorkerLost", "", ""),
        ('we"ird\\type', "ünïcode \u2603 \x00 and\nnewlines", "\t{}[]"),
    ],
)
def test_error_summary_roundtrip(type_name: str, message: str, traceback: str) -> None:
    frames = protocol.error_outcome(type_name, message, traceback, [b"p"])
    expected = protocol.ErrorSummary(protocol.FailureCode.RAISED, type_name, message, traceback, "")
    assert protocol.read_error_summary(frames[0]) == expected
    # Frames arrive as bytes, buffers, or zmq.Frame-like objects (a ``buffer`` attribute).
    assert protocol.read_error_summary(memoryview(frames[0])) == expected
    assert protocol.read_error_summary(bytearray(frames[0])) == expected

    class FrameLike:
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

    assert protocol.read_error_summary(FrameLike(frames[0])) == expected


def test_read_error_summary_reads_a_zmq_frame() -> None:
    zmq = pytest.importorskip("zmq")
    (summary, _) = protocol.error_outcome("T", "m", "tb")
    assert protocol.read_error_summary(zmq.Frame(summary)) == (0, "T", "m", "tb", "")


def test_read_error_summary_keeps_only_the_known_fields_as_text() -> None:
    frame = json.dumps({"type": 1, "message": None, "traceback": [2], "extra": "x"}).encode()
    assert protocol.read_error_summary(frame) == (0, "1", "None", "[2]", "")


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"null",
        b"42",
        b'"a string"',
        b'["type", "message", "traceback"]',
        b"{}",
        b'{"type": "T", "message": "m"}',  # no traceback
        b'{"message": "m", "traceback": ""}',  # no type
        b'{"type": "T", "traceback": ""}',  # no message
    ],
)
def test_read_error_summary_rejects_non_json_and_missing_keys(frame: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad error summary"):
        protocol.read_error_summary(frame)


@pytest.mark.parametrize(
    "decode", [protocol.read_error_summary, protocol.decode_stats], ids=["summary", "stats"]
)
def test_deeply_nested_json_is_a_protocol_error(decode: Callable[[bytes], Any]) -> None:
    # Malformed input must surface as ProtocolError (logged, dropped), not RecursionError.
    with pytest.raises(ProtocolError):
        decode(b"[" * 100_000)


# ---------------------------------------------------------------------------------------------
# Round trips of batches

# Items owning 0, 1 and several payload frames, in an order that catches off-by-one splits.
FRAME_SETS: list[list[bytes]] = [[], [b"a"], [b"b0", b"b1", b"b2"], [], [b"c"], [b"d0", b"d1"]]
# Dependencies per item: none, several, one; distinct ids so a misplaced one shows.
DEP_SETS: list[tuple[int, ...]] = [(), (101, 102), (), (2**64 - 1, 0), (103,), (104, 105)]


def test_submit_roundtrip() -> None:
    items = [
        SubmitItem(
            i + 1, H1 if i % 2 else H2, list(Kind)[i % 2], i * 1000, DEP_SETS[i], FRAME_SETS[i]
        )
        for i in range(len(FRAME_SETS))
    ]
    frames = protocol.encode_submit(items)
    assert len(frames) == 1 + sum(len(f) for f in FRAME_SETS)
    assert frames[1:] == [f for fs in FRAME_SETS for f in fs]
    body, payload = roundtrip(frames, MsgType.SUBMIT)
    decoded = protocol.decode_submit(body, payload)
    assert decoded == items
    assert [item.deps for item in decoded] == DEP_SETS
    assert all(type(item.deps) is tuple for item in decoded)
    assert all(type(item.fn_hash) is bytes for item in decoded)


def test_submit_wire_layout() -> None:
    items = [
        SubmitItem(1, H1, Kind.CALL, 0, (), [b"a"]),
        SubmitItem(2, H2, Kind.STREAM, 64, (10, 11), []),
        SubmitItem(3, H1, Kind.CALL, 2**32 - 1, (12,), [b"b", b"c"]),
    ]
    frames = protocol.encode_submit(items)
    assert frames[0] == (
        prefix(type_=MsgType.SUBMIT)
        + struct.pack("!I", 3)
        + struct.pack(SUBMIT_ROW, 1, H1, 0, 0, 0, 1, 0)
        + struct.pack(SUBMIT_ROW, 2, H2, 1, 64, 2, 0, 0)
        + struct.pack(SUBMIT_ROW, 3, H1, 0, 2**32 - 1, 1, 2, 0)
        + struct.pack("!QQQ", 10, 11, 12)  # the dependency ids, in item order
    )
    assert frames[1:] == [b"a", b"b", b"c"]


def test_submit_bad_deps_section_is_refused() -> None:
    items = [
        SubmitItem(1, H1, Kind.CALL, 0, (7, 8), [b"x"]),
        SubmitItem(2, H1, Kind.CALL, 0, (), []),
        SubmitItem(3, H1, Kind.CALL, 0, (9, 10), []),
    ]
    frames = protocol.encode_submit(items)
    body, payload = roundtrip(frames, MsgType.SUBMIT)
    assert len(protocol.decode_submit(body, payload)) == 3  # the untouched message is fine
    for bad in (body[:-1], body[:-8], body[:-32], body + b"\x00", body + b"\x00" * 8):
        with pytest.raises(
            ProtocolError, match="SUBMIT: 4 dependencies and their routes need 32 bytes"
        ):
            protocol.decode_submit(bad, payload)
    # A dependency section where the rows declare none.
    body, payload = roundtrip(
        protocol.encode_submit([SubmitItem(1, H1, Kind.CALL, 0, (), [])]), MsgType.SUBMIT
    )
    with pytest.raises(ProtocolError, match="SUBMIT: 0 dependencies and their routes need 0 bytes"):
        protocol.decode_submit(body + struct.pack("!Q", 5), payload)


def _task_items() -> list[TaskItem]:
    """Items whose dependencies carry 0, 1 and 2 frames; every frame is distinct."""
    return [
        TaskItem(
            1,
            H1,
            Kind.CALL,
            0,
            0,
            [(Status.OK, [b"1.d0"]), (Status.ERROR, [b"1.e0", b"1.e1"])],
            [b"1.own"],
        ),
        TaskItem(2, H2, Kind.STREAM, 3, 16, [(Status.CANCELLED, [])], []),
        TaskItem(3, H1, Kind.CALL, 1, 0, [], [b"3.own0", b"3.own1"]),
        TaskItem(
            2**64 - 1,
            H2,
            Kind.CALL,
            2**16 - 1,
            2**32 - 1,
            [(Status.OK, []), (Status.OK, [b"4.d1"]), (Status.ERROR, [b"4.e0", b"4.e1"])],
            [],
        ),
    ]


def test_task_roundtrip() -> None:
    items = _task_items()
    body, payload = roundtrip(protocol.encode_task(items), MsgType.TASK)
    decoded = protocol.decode_task(body, payload)
    assert decoded == items
    assert decoded[0].deps == [(Status.OK, [b"1.d0"]), (Status.ERROR, [b"1.e0", b"1.e1"])]
    assert decoded[0].frames == [b"1.own"]
    assert decoded[1].deps == [(Status.CANCELLED, [])]
    assert decoded[2].deps == []
    assert decoded[3].deps[2] == (Status.ERROR, [b"4.e0", b"4.e1"])
    assert all(type(item.fn_hash) is bytes for item in decoded)


def test_task_roundtrip_with_plain_frame_sets() -> None:
    items = [TaskItem(2**63 + i, H1, Kind.CALL, i % 3, i, [], f) for i, f in enumerate(FRAME_SETS)]
    body, payload = roundtrip(protocol.encode_task(items), MsgType.TASK)
    assert protocol.decode_task(body, payload) == items


def test_task_wire_layout() -> None:
    frames = protocol.encode_task(_task_items()[:3])
    assert frames[0] == (
        prefix(type_=MsgType.TASK)
        + struct.pack("!I", 3)
        + struct.pack(TASK_ROW, 1, H1, 0, 0, 0, 0, 2, 1)
        + struct.pack(TASK_ROW, 2, H2, 1, 0, 3, 16, 1, 0)
        + struct.pack(TASK_ROW, 3, H1, 0, 0, 1, 0, 0, 2)
        # One (status, n frames) per dependency, in item order, after all the rows.
        + struct.pack(TASK_DEP, 0, 1)
        + struct.pack(TASK_DEP, 1, 2)
        + struct.pack(TASK_DEP, 2, 0)
    )
    # Each item's own frames, then its dependencies' frames, item after item.
    assert frames[1:] == [b"1.own", b"1.d0", b"1.e0", b"1.e1", b"3.own0", b"3.own1"]


def test_task_frame_total_mismatch_is_refused() -> None:
    frames = protocol.encode_task(_task_items())
    body, payload = roundtrip(frames, MsgType.TASK)
    # 3 own frames and 6 dependency frames.
    assert len(payload) == 9
    for wrong, n in ((payload[:-1], 8), ([], 0), ([*payload, b"extra"], 10), (payload[:3], 3)):
        with pytest.raises(ProtocolError, match=f"TASK: items own 9 frames but {n} arrived"):
            protocol.decode_task(body, wrong)


def test_task_bad_deps_section_is_refused() -> None:
    body, payload = roundtrip(protocol.encode_task(_task_items()[:2]), MsgType.TASK)
    for bad in (body[:-1], body[:-3], body[:-9], body + b"\x00", body + b"\x00" * 3):
        with pytest.raises(ProtocolError, match="TASK: 3 dependencies need 9 bytes"):
            protocol.decode_task(bad, payload)


def test_result_roundtrip() -> None:
    statuses = list(Status)
    items = [(10 + i, statuses[i % 3], f) for i, f in enumerate(FRAME_SETS)]
    body, payload = roundtrip(protocol.encode_result(items), MsgType.RESULT)
    decoded = protocol.decode_result(body, payload)
    assert decoded == [ResultItem(t, s, list(f)) for t, s, f in items]
    assert [item.status for item in decoded] == [s for _, s, _ in items]


def _packed(task_id: int, values: list[bytes]) -> StreamItem:
    return StreamItem(task_id, len(values), True, [protocol.pack_values(values)])


def test_items_roundtrip() -> None:
    # A stream's values in order, several of one task in one batch, interleaved with another's.
    items = [StreamItem(7 if i % 3 else 8, 1, False, f) for i, f in enumerate(FRAME_SETS)]
    frames = protocol.encode_items(items)
    assert frames[0] == (
        prefix(type_=MsgType.ITEM)
        + struct.pack("!I", len(items))
        + b"".join(struct.pack(ITEM_ROW, t, 1, 0, len(f)) for t, _, _, f in items)
    )
    body, payload = roundtrip(frames, MsgType.ITEM)
    decoded = protocol.decode_items(body, payload)
    assert decoded == [StreamItem(t, 1, False, list(f)) for t, _, _, f in items]
    assert all(type(item) is StreamItem for item in decoded)
    assert all(item.packed is False for item in decoded)


def test_items_packed_and_unpacked_roundtrip() -> None:
    # Packed chunks (0, 1 and several values) between unpacked values of the same task, and a
    # second task's items interleaved: order and ownership survive, and so do the values.
    values = {
        "a": [b"v0", b"", b"v2" * 50],
        "b": [b"w0"],
        "c": [],
        "d": [b"x" * 70_000, b"y"],  # a value longer than 16 bits can count
    }
    items = [
        _packed(7, values["a"]),
        StreamItem(7, 1, False, [b"big", b"oob0", b"oob1"]),
        _packed(8, values["b"]),
        StreamItem(8, 1, False, [b"one frame"]),
        _packed(7, values["c"]),
        _packed(2**64 - 1, values["d"]),
        StreamItem(7, 1, False, [b"last"]),
    ]
    frames = protocol.encode_items(items)
    assert frames[0] == (
        prefix(type_=MsgType.ITEM)
        + struct.pack("!I", 7)
        + struct.pack(ITEM_ROW, 7, 3, 1, 1)
        + struct.pack(ITEM_ROW, 7, 1, 0, 3)
        + struct.pack(ITEM_ROW, 8, 1, 1, 1)
        + struct.pack(ITEM_ROW, 8, 1, 0, 1)
        + struct.pack(ITEM_ROW, 7, 0, 1, 1)
        + struct.pack(ITEM_ROW, 2**64 - 1, 2, 1, 1)
        + struct.pack(ITEM_ROW, 7, 1, 0, 1)
    )
    # One frame per packed item, each unpacked item's frames as they are, in item order.
    assert frames[1:] == [f for item in items for f in item.frames]
    body, payload = roundtrip(frames, MsgType.ITEM)
    decoded = protocol.decode_items(body, payload)
    assert decoded == items
    assert [item.packed for item in decoded] == [True, False, True, False, True, True, False]
    assert all(type(item.packed) is bool for item in decoded)
    assert all(type(item.frames) is list for item in decoded)
    unpacked = [
        [bytes(v) for v in protocol.unpack_values(item.frames[0], item.n_values)]
        for item in decoded
        if item.packed
    ]
    assert unpacked == [values["a"], values["b"], values["c"], values["d"]]
    assert [item.frames for item in decoded if not item.packed] == [
        [b"big", b"oob0", b"oob1"],
        [b"one frame"],
        [b"last"],
    ]


def _item_body(*rows: tuple[int, int, int, int]) -> bytes:
    """An ITEM header body written out by hand, so the decoder is tested apart from the encoder."""
    return struct.pack("!I", len(rows)) + b"".join(struct.pack(ITEM_ROW, *row) for row in rows)


@pytest.mark.parametrize("n_frames", [0, 2, 3])
@pytest.mark.parametrize("n_values", [0, 1, 2])
def test_decode_items_rejects_a_packed_item_without_exactly_one_frame(
    n_frames: int, n_values: int
) -> None:
    packed = protocol.pack_values([b"v"] * n_values)
    # The bad item follows a good one: the whole message is refused, not half of it.
    body = _item_body((1, 1, 0, 1), (2, n_values, 1, n_frames))
    payload = [b"good", *[packed] * n_frames]
    with pytest.raises(ProtocolError, match="ITEM: a packed item has one frame"):
        protocol.decode_items(body, payload)
    # The same through the encoder, which trusts its caller.
    bad = StreamItem(2, n_values, True, [packed] * n_frames)
    body, payload = roundtrip(protocol.encode_items([bad]), MsgType.ITEM)
    with pytest.raises(ProtocolError, match="ITEM: a packed item has one frame"):
        protocol.decode_items(body, payload)
    # With exactly one frame, the same item is fine.
    body = _item_body((1, 1, 0, 1), (2, n_values, 1, 1))
    assert protocol.decode_items(body, [b"good", packed]) == [
        StreamItem(1, 1, False, [b"good"]),
        StreamItem(2, n_values, True, [packed]),
    ]


@pytest.mark.parametrize("n_values", [0, 2, 3, 2**32 - 1])
@pytest.mark.parametrize("n_frames", [0, 1, 2])
def test_decode_items_rejects_an_unpacked_item_not_of_one_value(
    n_values: int, n_frames: int
) -> None:
    own = [b"f%d" % i for i in range(n_frames)]
    body = _item_body((1, 2, 1, 1), (2, n_values, 0, n_frames))
    payload = [protocol.pack_values([b"a", b"b"]), *own]
    with pytest.raises(ProtocolError, match="an unpacked one, one value"):
        protocol.decode_items(body, payload)
    body, payload = roundtrip(
        protocol.encode_items([StreamItem(2, n_values, False, own)]), MsgType.ITEM
    )
    with pytest.raises(ProtocolError, match="an unpacked one, one value"):
        protocol.decode_items(body, payload)
    # One value is fine, however many frames it has.
    body = _item_body((2, 1, 0, n_frames))
    assert protocol.decode_items(body, own) == [StreamItem(2, 1, False, own)]


# ---------------------------------------------------------------------------------------------
# Packed stream values


def test_pack_values_wire_layout() -> None:
    assert protocol.pack_values([]) == b""
    assert protocol.pack_values([b""]) == struct.pack(VALUE_LEN, 0)
    assert protocol.pack_values([b"ab", b"", b"c"]) == (
        struct.pack(VALUE_LEN, 2)
        + b"ab"
        + struct.pack(VALUE_LEN, 0)
        + struct.pack(VALUE_LEN, 1)
        + b"c"
    )
    big = b"z" * 70_000
    assert protocol.pack_values([big]) == struct.pack(VALUE_LEN, 70_000) + big
    # Buffers pack like bytes.
    assert protocol.pack_values([memoryview(b"ab"), bytearray(b"c")]) == protocol.pack_values(
        [b"ab", b"c"]
    )


@pytest.mark.parametrize(
    "values",
    [
        [],
        [b""],
        [b"", b"", b""],
        [b"one"],
        [b"a", b"", b"bc", b"", b"def"],
        [bytes(range(256)) * 300, b"\x00\x00\x00\x04", b""],  # big; one that looks like a length
    ],
)
def test_pack_unpack_values_roundtrip(values: list[bytes]) -> None:
    frame = protocol.pack_values(values)
    assert len(frame) == sum(4 + len(v) for v in values)
    unpacked = protocol.unpack_values(frame, len(values))
    assert all(type(v) is memoryview for v in unpacked)
    assert [bytes(v) for v in unpacked] == values
    assert all(v.obj is frame for v in unpacked)  # views of the frame, not copies
    # Frames arrive as bytes, buffers, or zmq.Frame-like objects (a ``buffer`` attribute).
    for as_frame in (bytearray(frame), memoryview(frame)):
        assert [bytes(v) for v in protocol.unpack_values(as_frame, len(values))] == values

    class FrameLike:
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

    assert [bytes(v) for v in protocol.unpack_values(FrameLike(frame), len(values))] == values


def test_unpack_values_reads_a_zmq_frame() -> None:
    zmq = pytest.importorskip("zmq")
    values = [b"first", b"", b"third" * 1000, b""]
    frame = zmq.Frame(protocol.pack_values(values))
    unpacked = protocol.unpack_values(frame, len(values))
    assert all(type(v) is memoryview for v in unpacked)
    assert [bytes(v) for v in unpacked] == values
    assert protocol.unpack_values(zmq.Frame(b""), 0) == []
    with pytest.raises(ProtocolError, match="end early"):
        protocol.unpack_values(zmq.Frame(protocol.pack_values(values)), len(values) + 1)


def test_unpack_values_returns_views_not_copies() -> None:
    frame = bytearray(protocol.pack_values([b"abc", b"de"]))
    first, second = protocol.unpack_values(frame, 2)
    frame[4] = ord("X")  # the first value's first byte
    frame[-1] = ord("Y")  # the second value's last byte
    assert bytes(first) == b"Xbc"
    assert bytes(second) == b"dY"


@pytest.mark.parametrize(
    ("frame", "count"),
    [
        (b"", 1),  # no values at all
        (protocol.pack_values([b"a"]), 2),  # one value short
        (protocol.pack_values([b"a", b""]), 3),
        (b"\x00\x00\x00", 1),  # a length cut short
        (protocol.pack_values([b"a"]) + b"\x00\x00", 2),  # the next length cut short
        (protocol.pack_values([b"a"]), 2**32 - 1),  # a huge count fails fast, all the same
    ],
)
def test_unpack_values_rejects_values_that_end_early(frame: bytes, count: int) -> None:
    with pytest.raises(ProtocolError, match="ITEM: packed values end early"):
        protocol.unpack_values(frame, count)


@pytest.mark.parametrize(
    ("frame", "count"),
    [
        (struct.pack(VALUE_LEN, 1), 1),  # a length and no value
        (struct.pack(VALUE_LEN, 10) + b"abc", 1),
        (struct.pack(VALUE_LEN, 2**32 - 1) + b"abc", 1),
        (protocol.pack_values([b"ok"]) + struct.pack(VALUE_LEN, 3) + b"ab", 2),  # the last one
        (protocol.pack_values([b"abc"])[:-1], 1),  # the frame cut inside a value
    ],
)
def test_unpack_values_rejects_a_value_past_the_frame(frame: bytes, count: int) -> None:
    with pytest.raises(ProtocolError, match="ITEM: a packed value runs past the frame"):
        protocol.unpack_values(frame, count)


@pytest.mark.parametrize(
    ("frame", "count"),
    [
        (b"\x00", 0),  # no values expected, a byte arrived
        (protocol.pack_values([b"a"]), 0),
        (protocol.pack_values([b"a", b"b"]), 1),  # one value more than the count
        (protocol.pack_values([b"a"]) + b"\x00", 1),  # a stray byte
        (protocol.pack_values([b"a"]) + b"\x00\x00\x00", 1),  # three: not even a length
        (protocol.pack_values([b"", b""]), 1),
    ],
)
def test_unpack_values_rejects_bytes_left_over(frame: bytes, count: int) -> None:
    with pytest.raises(ProtocolError, match="ITEM: bytes left after the packed values"):
        protocol.unpack_values(frame, count)


def test_unpack_values_of_nothing() -> None:
    assert protocol.unpack_values(b"", 0) == []
    assert protocol.unpack_values(protocol.pack_values([]), 0) == []


def test_ack_roundtrip() -> None:
    acks = [(1, 1), (2**64 - 1, 2**32 - 1), (5, 0), (1, 3)]
    frames = protocol.encode_ack(acks)
    assert len(frames) == 1  # no payload
    assert frames[0] == (
        prefix(type_=MsgType.ACK)
        + struct.pack("!I", 4)
        + b"".join(struct.pack(ACK_ROW, *a) for a in acks)
    )
    body, payload = roundtrip(frames, MsgType.ACK)
    assert protocol.decode_ack(body, payload) == acks


def test_cancel_roundtrip() -> None:
    ids = [3, 2**64 - 1, 0, 3]
    frames = protocol.encode_cancel(ids)
    assert len(frames) == 1  # no payload
    assert frames[0] == (
        prefix(type_=MsgType.CANCEL)
        + struct.pack("!I", 4)
        + b"".join(struct.pack(CANCEL_ROW, t) for t in ids)
    )
    body, payload = roundtrip(frames, MsgType.CANCEL)
    assert protocol.decode_cancel(body, payload) == ids


@pytest.mark.parametrize(
    ("what", "encode", "decode", "rows"),
    [
        ("ACK", protocol.encode_ack, protocol.decode_ack, [(1, 2), (3, 4)]),
        ("CANCEL", protocol.encode_cancel, protocol.decode_cancel, [1, 2]),
    ],
)
def test_payloadless_batches_refuse_payload_and_stray_bytes(
    what: str, encode: Callable[..., list[Any]], decode: Callable[..., Any], rows: list[Any]
) -> None:
    body, payload = roundtrip(encode(rows), MsgType[what])
    assert decode(body, payload) == rows
    for stray in ([b"x"], [b""], [b"x", b"y"]):
        with pytest.raises(ProtocolError, match=f"{what}: items own 0 frames but {len(stray)}"):
            decode(body, stray)
    for extra in (b"\x00", b"\x00" * 7, b"\x00" * 11):
        with pytest.raises(ProtocolError, match=f"{what}: {len(extra)} stray bytes"):
            decode(body + extra, [])
    with pytest.raises(ProtocolError, match=f"{what}: header says"):
        decode(body[:-1], [])


@pytest.mark.parametrize("n_frames", [0, 1, 5])
def test_single_item_batches(n_frames: int) -> None:
    frames = [bytes([i]) * 3 for i in range(n_frames)]
    body, payload = roundtrip(protocol.encode_result([(99, Status.OK, frames)]), MsgType.RESULT)
    assert protocol.decode_result(body, payload) == [ResultItem(99, Status.OK, frames)]
    body, payload = roundtrip(
        protocol.encode_items([StreamItem(99, 1, False, frames)]), MsgType.ITEM
    )
    assert protocol.decode_items(body, payload) == [StreamItem(99, 1, False, frames)]
    packed = protocol.pack_values(frames)
    body, payload = roundtrip(protocol.encode_items([_packed(99, frames)]), MsgType.ITEM)
    assert protocol.decode_items(body, payload) == [StreamItem(99, n_frames, True, [packed])]
    dep = TaskItem(99, H1, Kind.CALL, 0, 0, [(Status.OK, frames)], [])
    body, payload = roundtrip(protocol.encode_task([dep]), MsgType.TASK)
    assert protocol.decode_task(body, payload) == [dep]


@pytest.mark.parametrize(
    ("encode", "decode", "type_"),
    [
        (protocol.encode_submit, protocol.decode_submit, MsgType.SUBMIT),
        (protocol.encode_task, protocol.decode_task, MsgType.TASK),
        (protocol.encode_result, protocol.decode_result, MsgType.RESULT),
        (protocol.encode_items, protocol.decode_items, MsgType.ITEM),
        (protocol.encode_ack, protocol.decode_ack, MsgType.ACK),
        (protocol.encode_cancel, protocol.decode_cancel, MsgType.CANCEL),
    ],
)
def test_empty_batch_roundtrip(
    encode: Callable[..., list[Any]], decode: Callable[..., Any], type_: MsgType
) -> None:
    frames = encode([])
    assert frames == [prefix(type_=type_) + struct.pack("!I", 0)]
    body, payload = roundtrip(frames, type_)
    assert decode(body, payload) == []


def test_batch_payload_frames_pass_through_untouched() -> None:
    # The router forwards payload frames as opaque objects: decoding must not copy or convert.
    own: list[Any] = [memoryview(b"mv"), bytearray(b"ba")]
    dep: list[Any] = [memoryview(b"dep")]
    item = TaskItem(1, H1, Kind.CALL, 0, 0, [(Status.OK, dep)], own)
    body, payload = roundtrip(protocol.encode_task([item]), MsgType.TASK)
    (decoded,) = protocol.decode_task(body, payload)
    assert decoded.frames[0] is own[0]
    assert decoded.frames[1] is own[1]
    assert decoded.deps[0][1][0] is dep[0]
    body, payload = roundtrip(
        protocol.encode_submit([SubmitItem(1, H1, Kind.CALL, 0, (2,), own)]), MsgType.SUBMIT
    )
    (submitted,) = protocol.decode_submit(body, payload)
    assert submitted.frames[0] is own[0] and submitted.frames[1] is own[1]
    body, payload = roundtrip(protocol.encode_items([StreamItem(1, 1, False, own)]), MsgType.ITEM)
    (streamed,) = protocol.decode_items(body, payload)
    assert streamed.frames[0] is own[0] and streamed.frames[1] is own[1]
    packed: Any = memoryview(protocol.pack_values([b"v0", b"v1"]))
    body, payload = roundtrip(
        protocol.encode_items([StreamItem(1, 2, True, [packed])]), MsgType.ITEM
    )
    (chunk,) = protocol.decode_items(body, payload)
    assert chunk.frames[0] is packed


# ---------------------------------------------------------------------------------------------
# Batch validation (the batches whose items own payload frames)


def _submit(frames: list[bytes]) -> SubmitItem:
    return SubmitItem(1, H1, Kind.CALL, 0, (), frames)


def _task(frames: list[bytes]) -> TaskItem:
    return TaskItem(1, H1, Kind.CALL, 0, 0, [], frames)


# (name, build one item owning these frames, encode, decode, error for bytes after the rows)
BATCHES: list[tuple[str, Callable[[list[bytes]], Any], Callable[..., Any], Callable[..., Any], str]]
BATCHES = [
    (
        "SUBMIT",
        _submit,
        protocol.encode_submit,
        protocol.decode_submit,
        "SUBMIT: 0 dependencies and their routes need 0 bytes",
    ),
    ("TASK", _task, protocol.encode_task, protocol.decode_task, "TASK: 0 dependencies need 0"),
    (
        "RESULT",
        lambda f: (1, Status.OK, f),
        protocol.encode_result,
        protocol.decode_result,
        "RESULT: .* stray bytes after the items",
    ),
    (
        "ITEM",
        lambda f: StreamItem(1, 1, False, f),  # one value, however many frames
        protocol.encode_items,
        protocol.decode_items,
        "ITEM: .* stray bytes after the items",
    ),
]


@pytest.mark.parametrize(("what", "build", "encode", "decode", "extra_error"), BATCHES)
def test_batch_count_disagreeing_with_bytes_is_refused(
    what: str,
    build: Callable[[list[bytes]], Any],
    encode: Callable[..., list[Any]],
    decode: Callable[..., Any],
    extra_error: str,
) -> None:
    frames = encode([build([b"p"]), build([b"q"])])
    _, body = protocol.parse_header(frames)
    count = struct.unpack_from("!I", body)[0]
    assert count == 2
    rows = body[4:]
    assert len(decode(body, frames[1:])) == 2
    for bad in (
        struct.pack("!I", 3) + rows,  # says more items than it holds
        body[:-1],  # a truncated row
    ):
        with pytest.raises(ProtocolError, match=f"{what}: header says"):
            decode(bad, frames[1:])
    for bad in (
        struct.pack("!I", 1) + rows,  # says fewer: the second row is left over
        body + b"\x00",  # a stray byte
    ):
        with pytest.raises(ProtocolError, match=extra_error):
            decode(bad, frames[1:])
    for short in (b"", b"\x00\x00\x00"):
        with pytest.raises(ProtocolError, match=f"{what}: header too short"):
            decode(short, [])


@pytest.mark.parametrize(("what", "build", "encode", "decode", "extra_error"), BATCHES)
def test_batch_frame_totals_disagreeing_with_payload_are_refused(
    what: str,
    build: Callable[[list[bytes]], Any],
    encode: Callable[..., list[Any]],
    decode: Callable[..., Any],
    extra_error: str,
) -> None:
    frames = encode([build([b"p", b"p2"]), build([])])
    _, body = protocol.parse_header(frames)
    payload = frames[1:]
    assert len(decode(body, payload)) == 2  # the untouched message is fine
    for wrong in (payload[:1], [], [*payload, b"extra"]):
        with pytest.raises(
            ProtocolError, match=f"{what}: items own 2 frames but {len(wrong)} arrived"
        ):
            decode(body, wrong)


# ---------------------------------------------------------------------------------------------
# Header checks


def test_parse_header_rejects_empty_message() -> None:
    with pytest.raises(ProtocolError, match="empty message") as info:
        protocol.parse_header([])
    assert info.value.frames == []


@pytest.mark.parametrize(
    "header",
    [b"", b"S", b"SQ", b"SQ\x01", b"XX\x01\x09", b"sq\x01\x09", b"\x00" * 20],
)
def test_parse_header_rejects_bad_magic_and_short_headers(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad magic") as info:
        protocol.parse_header([header, b"payload"])
    assert not isinstance(info.value, VersionMismatch)
    assert info.value.frames == [header, b"payload"]


@pytest.mark.parametrize("type_", [0, max(MsgType) + 1, 255])
def test_parse_header_rejects_unknown_type(type_: int) -> None:
    header = prefix(type_=type_)
    with pytest.raises(ProtocolError, match=f"unknown message type {type_}") as info:
        protocol.parse_header([header])
    assert info.value.frames == [header]


@pytest.mark.parametrize("type_", [MsgType.ITEM, MsgType.ACK, MsgType.CANCEL])
def test_parse_header_knows_the_new_types(type_: MsgType) -> None:
    assert protocol.parse_header([prefix(type_=type_) + b"body"]) == (type_, b"body")


@pytest.mark.parametrize("version", [0, VERSION + 1, 255])
def test_parse_header_rejects_other_versions(version: int) -> None:
    frames = [prefix(version=version, type_=MsgType.HELLO) + b"rest", b"p"]
    with pytest.raises(VersionMismatch) as info:
        protocol.parse_header(frames)
    exc = info.value
    assert exc.version == version
    assert isinstance(exc, ProtocolError)
    assert isinstance(exc, SquallError)
    assert exc.frames == frames
    assert str(version) in str(exc)


def test_version_mismatch_is_caught_as_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_header([prefix(version=VERSION + 1)])


def test_parse_header_returns_body_after_prefix() -> None:
    frames = protocol.encode_credit(5)
    type_, body = protocol.parse_header(frames)
    assert type_ is MsgType.CREDIT
    assert body == struct.pack("!I", 5)
    assert frames[0] == prefix(type_=MsgType.CREDIT) + body


def test_parse_header_accepts_buffer_frames() -> None:
    frames = protocol.encode_credit(5)
    type_, body = protocol.parse_header([memoryview(frames[0])])
    assert type_ is MsgType.CREDIT
    assert protocol.decode_credit(body) == 5


def test_protocol_error_frames_are_capped_for_reports() -> None:
    frames = [b"XX" + b"\x00" * 1000] + [b"f"] * 20
    with pytest.raises(ProtocolError) as info:
        protocol.parse_header(frames)
    assert len(info.value.frames) == 8
    assert info.value.frames[0] == frames[0][:256]
    assert all(type(f) is bytes for f in info.value.frames)


def test_protocol_error_carries_frames() -> None:
    exc = ProtocolError("bad", [b"a", b"b"])
    assert exc.frames == [b"a", b"b"]
    assert str(exc) == "bad"
    assert ProtocolError("bad").frames == []


# ---------------------------------------------------------------------------------------------
# Fixed-size bodies


@pytest.mark.parametrize(
    ("decode", "size"),
    [
        (protocol.decode_hello, 9),
        (protocol.decode_welcome, 21),
        (protocol.decode_fn_fetch, 16),
        (protocol.decode_credit, 4),
    ],
)
def test_fixed_bodies_of_the_wrong_size_are_refused(
    decode: Callable[[bytes], Any], size: int
) -> None:
    for body in (b"", b"\x01" * (size - 1), b"\x01" * (size + 1)):
        with pytest.raises(ProtocolError, match="header body is"):
            decode(body)


def test_fn_body_with_short_hash_is_refused() -> None:
    with pytest.raises(ProtocolError, match="FN_BODY"):
        protocol.decode_fn_body(b"\x00" * 15, [b"body"])


@pytest.mark.parametrize("role", [0, 3, 255])
def test_decode_hello_rejects_unknown_role(role: int) -> None:
    with pytest.raises(ProtocolError, match=f"unknown role {role}"):
        protocol.decode_hello(struct.pack("!BII", role, 1, 1))


# ---------------------------------------------------------------------------------------------
# Fuzz-ish: random input never raises anything but ProtocolError

_ROW_SIZES = {
    MsgType.SUBMIT: struct.calcsize(SUBMIT_ROW),
    MsgType.TASK: struct.calcsize(TASK_ROW),
    MsgType.RESULT: struct.calcsize(RESULT_ROW),
    MsgType.ITEM: struct.calcsize(ITEM_ROW),
    MsgType.ACK: struct.calcsize(ACK_ROW),
    MsgType.CANCEL: struct.calcsize(CANCEL_ROW),
}
BATCH_TYPES = list(_ROW_SIZES)


def test_row_sizes() -> None:
    assert _ROW_SIZES == {
        MsgType.SUBMIT: 35,
        MsgType.TASK: 36,
        MsgType.RESULT: 11,
        MsgType.ITEM: 15,
        MsgType.ACK: 12,
        MsgType.CANCEL: 8,
    }


def decode_any(frames: Sequence[Any]) -> object:
    """What the router (or a peer) does with a message: header, then the matching decoder."""
    type_, body = protocol.parse_header(frames)
    payload = list(frames[1:])
    decoders: dict[MsgType, Callable[[], object]] = {
        MsgType.HELLO: lambda: protocol.decode_hello(body),
        MsgType.WELCOME: lambda: protocol.decode_welcome(body),
        MsgType.SUBMIT: lambda: protocol.decode_submit(body, payload),
        MsgType.TASK: lambda: protocol.decode_task(body, payload),
        MsgType.RESULT: lambda: protocol.decode_result(body, payload),
        MsgType.FN_FETCH: lambda: protocol.decode_fn_fetch(body),
        MsgType.FN_BODY: lambda: protocol.decode_fn_body(body, payload),
        MsgType.CREDIT: lambda: protocol.decode_credit(body),
        MsgType.ERROR: lambda: protocol.decode_error(body),
        MsgType.STATS: lambda: protocol.decode_stats(body),
        MsgType.ITEM: lambda: decode_and_unpack_items(body, payload),
        MsgType.ACK: lambda: protocol.decode_ack(body, payload),
        MsgType.CANCEL: lambda: protocol.decode_cancel(body, payload),
        MsgType.ENQUEUE: lambda: protocol.decode_enqueue(body, payload),
        MsgType.ENQUEUED: lambda: protocol.decode_enqueued(body, payload),
        MsgType.QUERY: lambda: protocol.decode_query(body, payload),
    }
    decoder = decoders.get(type_)
    return None if decoder is None else decoder()  # HEARTBEAT, DISCONNECT: nothing to decode


def decode_and_unpack_items(body: bytes, payload: list[Any]) -> list[StreamItem]:
    """What the client does with an ITEM: decode it, then unpack each packed chunk."""
    items = protocol.decode_items(body, payload)
    for item in items:
        if item.packed:
            assert len(protocol.unpack_values(item.frames[0], item.n_values)) == item.n_values
    return items


def _frames(rng: random.Random, most: int = 3) -> list[bytes]:
    return [rng.randbytes(rng.randrange(0, 6)) for _ in range(rng.randrange(0, most + 1))]


def random_batch(rng: random.Random, type_: MsgType) -> tuple[list[Any], list[Any]]:
    """Random valid items of a batch type and their encoded message."""
    n = rng.randrange(0, 5)
    items: list[Any]
    if type_ is MsgType.SUBMIT:
        items = [
            SubmitItem(
                rng.getrandbits(64),
                rng.randbytes(16),
                rng.choice(list(Kind)),
                rng.getrandbits(32),
                tuple(rng.getrandbits(64) for _ in range(rng.randrange(0, 3))),
                _frames(rng),
            )
            for _ in range(n)
        ]
        return items, protocol.encode_submit(items)
    if type_ is MsgType.TASK:
        items = [
            TaskItem(
                rng.getrandbits(64),
                rng.randbytes(16),
                rng.choice(list(Kind)),
                rng.getrandbits(16),
                rng.getrandbits(32),
                [(rng.choice(list(Status)), _frames(rng, 2)) for _ in range(rng.randrange(0, 3))],
                _frames(rng),
            )
            for _ in range(n)
        ]
        return items, protocol.encode_task(items)
    if type_ is MsgType.RESULT:
        items = [
            ResultItem(rng.getrandbits(64), rng.choice(list(Status)), _frames(rng))
            for _ in range(n)
        ]
        return items, protocol.encode_result(items)
    if type_ is MsgType.ITEM:
        items = [
            StreamItem(rng.getrandbits(64), 1, False, _frames(rng))
            if rng.random() < 0.5
            else _packed(rng.getrandbits(64), _frames(rng, 5))
            for _ in range(n)
        ]
        return items, protocol.encode_items(items)
    if type_ is MsgType.ACK:
        items = [(rng.getrandbits(64), rng.getrandbits(32)) for _ in range(n)]
        return items, protocol.encode_ack(items)
    items = [rng.getrandbits(64) for _ in range(n)]
    return items, protocol.encode_cancel(items)


def mutate(rng: random.Random, frames: list[Any]) -> list[Any]:
    """One random change to a real message: frames or header bytes."""
    header, payload = frames[0], list(frames[1:])
    choice = rng.randrange(6)
    if choice == 0:
        payload.append(rng.randbytes(3))
    elif choice == 1 and payload:
        payload.pop(rng.randrange(len(payload)))
    elif choice == 2 and len(header) > 4:
        at = rng.randrange(4, len(header))
        header = header[:at] + bytes([rng.randrange(256)]) + header[at + 1 :]
    elif choice == 3:
        header = header[: rng.randrange(len(header) + 1)]
    elif choice == 4:
        header = header + rng.randbytes(rng.randrange(1, 10))
    else:
        at = rng.randrange(4, len(header) + 1)
        header = header[:at] + rng.randbytes(rng.randrange(1, 4)) + header[at:]
    return [header, *payload]


def random_message(rng: random.Random) -> tuple[MsgType | None, list[bytes]]:
    """A random frame list; most headers are squall-shaped so that the decoders get exercised."""
    n_payload = rng.choice([0, 0, 1, 1, 2, 3, rng.randrange(0, 12)])
    payload = [rng.randbytes(rng.randrange(0, 8)) for _ in range(n_payload)]
    shape = rng.random()
    if shape < 0.1:  # anything at all
        return None, [rng.randbytes(rng.randrange(0, 40)), *payload]
    if shape < 0.15:  # valid magic, random version and type
        return None, [MAGIC + rng.randbytes(rng.randrange(0, 30)), *payload]
    if shape < 0.2:
        return None, []
    if shape < 0.55:  # a real batch, sometimes intact, mostly damaged
        type_ = rng.choice(BATCH_TYPES)
        _, frames = random_batch(rng, type_)
        return type_, frames if rng.random() < 0.3 else mutate(rng, frames)
    # A real prefix, random body.
    type_ = rng.choice([*MsgType, 0, max(MsgType) + 1])
    if type_ in _ROW_SIZES and rng.random() < 0.5:
        # Consistent count and row bytes, so the checks after the rows are reached too.
        count = rng.randrange(0, 4)
        body = struct.pack("!I", count) + rng.randbytes(count * _ROW_SIZES[type_])
        if rng.random() < 0.5:
            payload = []
    else:
        body = rng.randbytes(rng.randrange(0, 40))
    return (type_ if type_ in _ROW_SIZES else None), [prefix(type_=type_) + body, *payload]


def test_fuzz_only_protocol_errors() -> None:
    rng = random.Random(20240611)
    outcomes = {"ok": 0, "refused": 0}
    per_type = {t: {"ok": 0, "refused": 0} for t in BATCH_TYPES}
    packed_ok = 0  # ITEM messages accepted with at least one packed value unpacked
    for _ in range(3000):
        type_, frames = random_message(rng)
        try:
            decoded = decode_any(frames)
        except ProtocolError as exc:
            assert isinstance(exc.frames, list)
            outcome = "refused"
        else:
            outcome = "ok"
            if type_ is MsgType.ITEM and isinstance(decoded, list):
                packed_ok += any(item.packed and item.n_values for item in decoded)
        outcomes[outcome] += 1
        if type_ is not None:
            per_type[type_][outcome] += 1
    # Both paths were exercised: the generator is not trivially all-garbage or all-valid.
    assert outcomes["ok"] > 300
    assert outcomes["refused"] > 1000
    for type_, counts in per_type.items():
        assert counts["ok"] > 20, type_
        assert counts["refused"] > 20, type_
    assert packed_ok > 5


def test_fuzz_random_batches_roundtrip() -> None:
    rng = random.Random(99)
    packed = 0
    for _ in range(400):
        type_ = rng.choice(BATCH_TYPES)
        items, frames = random_batch(rng, type_)
        decoded = decode_any(frames)
        assert decoded == items
        if type_ is MsgType.ITEM:
            for item in protocol.decode_items(*roundtrip(frames, MsgType.ITEM)):
                if item.packed:
                    values = protocol.unpack_values(item.frames[0], item.n_values)
                    assert protocol.pack_values([bytes(v) for v in values]) == item.frames[0]
                    packed += 1
    assert packed > 20


def test_fuzz_packed_values() -> None:
    # Damaged packed frames and wrong counts are refused cleanly; whatever is accepted is exactly
    # what pack_values makes of the values it returns.
    rng = random.Random(5)
    seen = {"ok": 0, "refused": 0}
    for _ in range(3000):
        values = [rng.randbytes(rng.choice([0, 0, 1, 3, 7])) for _ in range(rng.randrange(0, 5))]
        frame = protocol.pack_values(values)
        count = len(values)
        shape = rng.randrange(6)
        if shape == 0 and frame:  # one byte changed, lengths included
            at = rng.randrange(len(frame))
            frame = frame[:at] + bytes([rng.randrange(256)]) + frame[at + 1 :]
        elif shape == 1:  # cut
            frame = frame[: rng.randrange(len(frame) + 1)]
        elif shape == 2:  # extended
            frame = frame + rng.randbytes(rng.randrange(1, 9))
        elif shape == 3:  # another count
            count = max(0, count + rng.choice([-2, -1, 1, 2]))
        elif shape == 4:  # anything at all
            frame = rng.randbytes(rng.randrange(0, 24))
        try:
            unpacked = protocol.unpack_values(frame, count)
        except ProtocolError:
            seen["refused"] += 1
        else:
            seen["ok"] += 1
            assert len(unpacked) == count
            assert protocol.pack_values([bytes(v) for v in unpacked]) == frame
    assert seen["ok"] > 500
    assert seen["refused"] > 1000


def test_fuzz_random_bytes_through_parse_header() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        frames = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 4))]
        try:
            decode_any(frames)
        except ProtocolError:
            pass


def test_fuzz_error_summaries() -> None:
    rng = random.Random(11)
    good = protocol.error_outcome("T", "msg", "tb")[0]
    values: list[Any] = [None, 1, 1.5, "s", [], {}, [1, "x"], {"type": "T"}, True]
    seen = {"ok": 0, "refused": 0}
    for _ in range(1500):
        shape = rng.random()
        if shape < 0.3:
            frame = rng.randbytes(rng.randrange(0, 40))
        elif shape < 0.6:  # a valid summary, damaged
            at = rng.randrange(len(good))
            frame = good[:at] + rng.randbytes(rng.randrange(0, 3)) + good[at + 1 :]
        else:  # well-formed JSON of a random shape
            fields = ["code", "type", "message", "traceback", "other"]
            keys = rng.sample(fields, rng.randrange(0, 6))
            value = {k: rng.choice(values) for k in keys} if rng.random() < 0.8 else []
            frame = json.dumps(value).encode()
        try:
            summary = protocol.read_error_summary(frame)
        except ProtocolError:
            seen["refused"] += 1
        else:
            seen["ok"] += 1
            assert type(summary.code) is protocol.FailureCode
            assert all(type(v) is str for v in summary[1:])
    assert seen["ok"] > 100
    assert seen["refused"] > 500


def test_fuzz_truncations_of_real_messages() -> None:
    # Every prefix of a valid header, and every frame-count change, is refused cleanly.
    messages = [
        protocol.encode_hello(Role.WORKER, 1, 2),
        protocol.encode_welcome(1.0, 2),
        protocol.encode_fn_fetch(H1),
        protocol.encode_fn_body(H1, b"body"),
        protocol.encode_credit(3),
        protocol.encode_error(ErrorCode.VERSION, "why"),
        protocol.encode_stats({"a": 1}),
        protocol.encode_submit(
            [SubmitItem(1, H1, Kind.CALL, 0, (), [b"x", b"y"]), SubmitItem(2, H2, 1, 4, (1,), [])]
        ),
        protocol.encode_task(_task_items()),
        protocol.encode_result([(1, Status.OK, [b"x"]), (2, Status.ERROR, [])]),
        protocol.encode_items(
            [
                _packed(1, [b"x", b"", b"y"]),
                StreamItem(1, 1, False, [b"a", b"b"]),
                _packed(1, []),
                StreamItem(2, 1, False, []),
            ]
        ),
        protocol.encode_ack([(1, 2), (3, 4)]),
        protocol.encode_cancel([1, 2]),
    ]
    for frames in messages:
        assert decode_any(frames) is not None  # the intact message decodes
        type_, _ = protocol.parse_header(frames)
        header = frames[0]
        for cut in range(len(header)):
            if type_ is MsgType.ERROR and cut > 4:
                continue  # any reason, even a cut one, is a reason
            with pytest.raises(ProtocolError):
                decode_any([header[:cut], *frames[1:]])
        if type_ in _ROW_SIZES or type_ is MsgType.FN_BODY:  # these count their payload
            with pytest.raises(ProtocolError):  # (FN_BODY may carry a name frame, not two)
                decode_any([header, *frames[1:], b"extra", b"extra"])
            if len(frames) > 1:
                with pytest.raises(ProtocolError):
                    decode_any(frames[:-1])


def test_timeout_started_and_watchdog_heartbeat_roundtrip() -> None:
    body, payload = roundtrip(protocol.encode_timeout(b"w1", "5 s", [3, 4]), MsgType.TIMEOUT)
    assert protocol.decode_timeout(body, payload) == (b"w1", "5 s", [3, 4])
    body, payload = roundtrip(protocol.encode_started([7, 8, 9]), MsgType.STARTED)
    assert protocol.decode_started(body, payload) == [7, 8, 9]
    body, payload = roundtrip(protocol.encode_heartbeat(b"w1"), MsgType.HEARTBEAT)
    assert protocol.decode_heartbeat(body, payload) == protocol.Heartbeat(b"w1")
    body, payload = roundtrip(protocol.encode_heartbeat(), MsgType.HEARTBEAT)
    assert protocol.decode_heartbeat(body, payload) == protocol.Heartbeat()
    with pytest.raises(ProtocolError):
        protocol.decode_heartbeat(b"x", [])
    with pytest.raises(ProtocolError):
        protocol.decode_timeout(*roundtrip(protocol.encode_started([1]), MsgType.STARTED))


def test_welcome_carries_the_epoch_and_whether_the_session_was_kept() -> None:
    body, _ = roundtrip(protocol.encode_welcome(1.0, 3, 2**63 + 5, True), MsgType.WELCOME)
    assert protocol.decode_welcome(body) == Welcome(1.0, 3, 2**63 + 5, True)


def test_a_watchdog_heartbeat_reports_a_blocked_hub() -> None:
    frames = protocol.encode_heartbeat(b"w1", blocked_ms=2500, last_task=2**40)
    body, payload = roundtrip(frames, MsgType.HEARTBEAT)
    assert protocol.decode_heartbeat(body, payload) == protocol.Heartbeat(b"w1", 2500, 2**40)
    with pytest.raises(ProtocolError, match="only a watchdog"):
        protocol.decode_heartbeat(body, [])
    with pytest.raises(ProtocolError):
        protocol.decode_heartbeat(body[:5], payload)


def test_withdraw_roundtrip() -> None:
    body, payload = roundtrip(protocol.encode_withdraw([(7, True), (9, False)]), MsgType.WITHDRAW)
    assert protocol.decode_withdraw(body, payload) == [(7, True), (9, False)]
    with pytest.raises(ProtocolError):
        protocol.decode_withdraw(body, [b"extra"])


def test_a_client_hello_may_name_a_worker_group() -> None:
    body, payload = roundtrip(protocol.encode_hello(Role.CLIENT, 7, group="gpu"), MsgType.HELLO)
    assert protocol.decode_hello(body, payload) == Hello(Role.CLIENT, 7, 0, "gpu")
    for bad in ([b"\xff"], [b""], [b"x" * 65], [b"a", b"b"], [b"tab\there"]):
        with pytest.raises(ProtocolError):
            protocol.decode_hello(body, bad)


def test_peer_ids_are_random_and_never_libzmq_shaped() -> None:
    ids = {protocol.new_peer_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(protocol.is_peer_id(i) and len(i) == protocol.PEER_ID_SIZE for i in ids)
    assert not protocol.is_peer_id(b"\x00kE\x8bg")  # libzmq's own
    assert not protocol.is_peer_id(b"short")
    assert protocol.is_peer_id(next(iter(ids)) + b"/watchdog")


def test_crashed_roundtrip() -> None:
    body, payload = roundtrip(protocol.encode_crashed(b"w" * 16, [5, 9]), MsgType.CRASHED)
    assert protocol.decode_crashed(body, payload) == (b"w" * 16, [5, 9])
    with pytest.raises(ProtocolError):
        protocol.decode_crashed(body, [])


def test_batches_split_at_max_items_in_order() -> None:
    items = list(range(2 * protocol.MAX_ITEMS + 1))
    parts = list(protocol.batches(items))
    assert [len(p) for p in parts] == [protocol.MAX_ITEMS, protocol.MAX_ITEMS, 1]
    assert [x for p in parts for x in p] == items
    assert list(protocol.batches([])) == []


def test_enqueue_roundtrip_and_layout() -> None:
    key = bytes(range(100, 116))
    items = [
        SubmitItem(7, H1, Kind.CALL, 0, (), [b"args"], key, 60.0, "app.send_mail", 0),
        SubmitItem(8, bytes(16), Kind.CALL, 0, (), [], key, 0.0, "", 1),
    ]
    frames = protocol.encode_enqueue(items)
    body, payload = roundtrip(frames, MsgType.ENQUEUE)
    assert protocol.decode_enqueue(body, payload) == items
    assert frames[0] == (
        prefix(type_=MsgType.ENQUEUE)
        + struct.pack("!I", 2)
        + struct.pack("!Q16s16sBBIdHHH", 7, key, H1, 0, 0, 0, 60.0, 13, 1, 0)
        + struct.pack("!Q16s16sBBIdHHH", 8, key, bytes(16), 0, 1, 0, 0.0, 0, 0, 0)
        + b"app.send_mail"
    )


def test_a_malformed_enqueue_or_query_is_a_protocol_error() -> None:
    item = SubmitItem(7, H1, Kind.CALL, 0, (), [b"args"], bytes(16), float("nan"), "", 0)
    body, payload = roundtrip(protocol.encode_enqueue([item]), MsgType.ENQUEUE)
    with pytest.raises(ProtocolError, match="keep"):
        protocol.decode_enqueue(body, payload)
    with pytest.raises(ProtocolError, match="JSON"):
        protocol.decode_query(struct.pack("!Q", 1), [b"{not json"])
    request, value, frames = protocol.decode_query(
        *_split(protocol.encode_query(5, {"op": "info"}))
    )
    assert (request, value, frames) == (5, {"op": "info"}, [])
    carried = protocol.encode_query(6, {"op": "schedule"}, [b"body", b"call"])
    assert protocol.decode_query(*_split(carried)) == (6, {"op": "schedule"}, [b"body", b"call"])
    with pytest.raises(ProtocolError, match="ANSWER: expected one JSON frame"):
        protocol.decode_answer(*_split(carried))


def _split(frames: list[Any]) -> tuple[bytes, list[Any]]:
    return protocol.parse_header(frames)[1], frames[1:]


def test_calls_by_name_carry_the_name_in_their_route_and_workers_name_what_they_serve() -> None:
    route = protocol.Route("emails", 3, 0.0, 0.0, "images.resize")
    item = protocol.SubmitItem(
        1,
        protocol.name_hash("images.resize"),
        protocol.Kind.JSON_CALL,
        0,
        (),
        [b"{}"],
        route=route,
    )
    frames = protocol.encode_submit([item])
    _, body = protocol.parse_header(frames)
    (decoded,) = protocol.decode_submit(body, frames[1:])
    assert decoded.route == route and decoded.kind == protocol.Kind.JSON_CALL
    hello = protocol.encode_hello(protocol.Role.WORKER, 7, 10, functions=("a.b", "c:d"))
    _, body = protocol.parse_header(hello)
    assert protocol.decode_hello(body, hello[1:]).functions == ("a.b", "c:d")
    bad = [hello[0], b"default", b"a b"]
    with pytest.raises(ProtocolError, match="function names"):
        protocol.decode_hello(body, bad[1:])
    assert protocol.name_hash("x") != protocol.function_hash(b"x")
    assert protocol.valid_function_name("reports.daily") and not protocol.valid_function_name("")


def _documented_frames(name: str) -> list[bytes]:
    """The frames of docs/protocol.md's byte-level example ``name``, as bytes."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    block = re.search(rf"<!-- example {name} -->\n```\n(.*?)```", doc, re.S)
    assert block is not None, name
    frames: list[bytes] = []
    for line in block.group(1).splitlines()[1:]:  # the first line says what it is
        label, _, rest = line.partition(":") if line.startswith("frame") else ("", "", line)
        if label:
            frames.append(b"")
        hex_part = re.split(r"\s{2,}\S*[\"']|\s{4,}", rest.strip(), maxsplit=1)[0]
        frames[-1] += bytes.fromhex(hex_part.replace("|", " "))
    return frames


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        (
            "hello-worker",
            protocol.encode_hello(
                Role.WORKER, 4242, 1000, queues=("default",), functions=("math.add",)
            ),
        ),
        (
            "submit-by-name",
            protocol.encode_submit(
                [
                    protocol.SubmitItem(
                        7,
                        protocol.name_hash("math.add"),
                        protocol.Kind.JSON_CALL,
                        0,
                        (),
                        [b'{"args":[2,3]}'],
                        route=protocol.Route("default", 0, 0.0, 0.0, "math.add"),
                    )
                ]
            ),
        ),
        ("result-ok", protocol.encode_result([(7, Status.OK, [b"5"])])),
        ("heartbeat", protocol.encode_heartbeat()),
    ],
)
def test_the_byte_level_examples_of_the_protocol_doc_are_what_squall_sends(
    name: str, frames: list[Any]
) -> None:
    assert _documented_frames(name) == [bytes(f) for f in frames]


def test_events_retried_and_the_operators_fields_roundtrip() -> None:
    started, failed = protocol.EVENT_CODES["task.started"], protocol.EVENT_CODES["task.failed"]
    joined = protocol.EVENT_CODES["worker.joined"]
    entries = [
        (started, 1.5, 255, "app.f", "default", 1, 7, None, "", "", 0),
        (started, 1.75, 256, "app.f", "default", 1, 7, None, "", "", 0),  # folded in
        (failed, 2.0, "01JH8Z3Q6V2W4M1T9K0XY5C7RD", "app.g", "emails", 2, 7, 0.25, "E", "m", 0),
        (joined, 3.0, 8, "node-1", ("default", "emails"), 100),
    ]
    frames = protocol.encode_events(entries)
    body, payload = roundtrip(frames, MsgType.EVENTS)
    strings, rows = protocol.decode_events(body, payload)
    assert len(rows) == 3  # the two started events share one row
    assert list(protocol.expand_events(strings, rows)) == [
        {"type": "task.started", "t": 1.5, "id": "00000000000000ff", "name": "app.f",
         "queue": "default", "attempt": 1, "worker": 7},
        {"type": "task.started", "t": 1.75, "id": "0000000000000100", "name": "app.f",
         "queue": "default", "attempt": 1, "worker": 7},
        {"type": "task.failed", "t": 2.0, "id": "01JH8Z3Q6V2W4M1T9K0XY5C7RD", "name": "app.g",
         "queue": "emails", "attempt": 2, "worker": 7, "runtime": 0.25, "error_type": "E",
         "error_message": "m"},
        {"type": "worker.joined", "t": 3.0, "worker": 8, "host": "node-1",
         "queues": ["default", "emails"], "capacity": 100},
    ]  # fmt: skip
    with pytest.raises(ProtocolError, match="not a JSON object"):
        protocol.decode_events(b"", [b"[1, 2]"])
    with pytest.raises(ProtocolError, match="strings"):
        protocol.decode_events(b"", [b'{"rows": []}'])
    with pytest.raises(ProtocolError, match="does not read"):
        list(protocol.expand_events([""], [[0, 0]]))
    retried = protocol.Retried(9, 2, "ConnectionError", "refused")
    body, payload = roundtrip(protocol.encode_retried([retried]), MsgType.RETRIED)
    assert protocol.decode_retried(body, payload) == [retried]
    with pytest.raises(ProtocolError):
        protocol.decode_retried(body, [])
    hello = protocol.encode_hello(Role.WORKER, 7, 10, host="node-1")
    body, payload = roundtrip(hello, MsgType.HELLO)
    decoded = protocol.decode_hello(body, payload)
    assert decoded.host == "node-1" and decoded.functions == () and decoded.queues == ("default",)
    beat = protocol.encode_heartbeat(rss=123 << 20)
    body, payload = roundtrip(beat, MsgType.HEARTBEAT)
    assert protocol.decode_heartbeat(body, payload).rss == 123 << 20
    with pytest.raises(ProtocolError, match="does not report memory"):
        protocol.decode_heartbeat(body, [b"worker id"])
