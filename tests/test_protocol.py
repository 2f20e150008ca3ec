"""Pure tests of the wire protocol: round trips, header checks, batch checks, a fuzz pass."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from squall import protocol
from squall.errors import ProtocolError, SquallError
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
    SubmitItem,
    TaskItem,
    VersionMismatch,
    Welcome,
)

H1 = bytes(range(16))
H2 = bytes(range(16, 32))


def roundtrip(frames: list[Any], expected_type: MsgType) -> tuple[bytes, list[Any]]:
    """Parse the header of an encoded message; return (header body, payload frames)."""
    type_, body = protocol.parse_header(frames)
    assert type_ is expected_type
    return body, frames[1:]


def prefix(version: int = VERSION, type_: int = MsgType.HEARTBEAT, magic: bytes = MAGIC) -> bytes:
    return struct.pack("!2sBB", magic, version, type_)


# ---------------------------------------------------------------------------------------------
# Round trips of simple messages


@pytest.mark.parametrize("role", list(Role))
def test_hello_roundtrip(role: Role) -> None:
    body, payload = roundtrip(protocol.encode_hello(role, 4242, 300), MsgType.HELLO)
    assert payload == []
    hello = protocol.decode_hello(body)
    assert hello == Hello(role, 4242, 300)
    assert hello.role is role


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
    assert protocol.decode_fn_body(body, payload) == (H2, fn_body)


@pytest.mark.parametrize("n_payload", [0, 2])
def test_fn_body_wants_exactly_one_payload_frame(n_payload: int) -> None:
    body, _ = roundtrip(protocol.encode_fn_body(H2, b"x"), MsgType.FN_BODY)
    with pytest.raises(ProtocolError, match="expected 1 payload frame"):
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


# ---------------------------------------------------------------------------------------------
# Round trips of batches

# Items owning 0, 1 and several payload frames, in an order that catches off-by-one splits.
FRAME_SETS: list[list[bytes]] = [[], [b"a"], [b"b0", b"b1", b"b2"], [], [b"c"], [b"d0", b"d1"]]


def test_submit_roundtrip() -> None:
    items = [(i + 1, H1 if i % 2 else H2, Kind.CALL, f) for i, f in enumerate(FRAME_SETS)]
    frames = protocol.encode_submit(items)
    assert len(frames) == 1 + sum(len(f) for f in FRAME_SETS)
    body, payload = roundtrip(frames, MsgType.SUBMIT)
    decoded = protocol.decode_submit(body, payload)
    assert decoded == [SubmitItem(t, h, k, list(f)) for t, h, k, f in items]
    assert all(type(item.fn_hash) is bytes for item in decoded)


def test_task_roundtrip() -> None:
    items = [(2**63 + i, H1, Kind.CALL, i % 3, f) for i, f in enumerate(FRAME_SETS)]
    body, payload = roundtrip(protocol.encode_task(items), MsgType.TASK)
    decoded = protocol.decode_task(body, payload)
    assert decoded == [TaskItem(t, h, k, a, list(f)) for t, h, k, a, f in items]


def test_result_roundtrip() -> None:
    statuses = [Status.OK, Status.ERROR]
    items = [(10 + i, statuses[i % 2], f) for i, f in enumerate(FRAME_SETS)]
    body, payload = roundtrip(protocol.encode_result(items), MsgType.RESULT)
    decoded = protocol.decode_result(body, payload)
    assert decoded == [ResultItem(t, s, list(f)) for t, s, f in items]


@pytest.mark.parametrize("n_frames", [0, 1, 5])
def test_single_item_batches(n_frames: int) -> None:
    frames = [bytes([i]) * 3 for i in range(n_frames)]
    body, payload = roundtrip(protocol.encode_result([(99, Status.OK, frames)]), MsgType.RESULT)
    assert protocol.decode_result(body, payload) == [ResultItem(99, Status.OK, frames)]


def test_empty_batch_roundtrip() -> None:
    body, payload = roundtrip(protocol.encode_submit([]), MsgType.SUBMIT)
    assert payload == []
    assert protocol.decode_submit(body, payload) == []


def test_batch_payload_frames_pass_through_untouched() -> None:
    # The router forwards payload frames as opaque objects: decoding must not copy or convert.
    frames: list[Any] = [memoryview(b"mv"), bytearray(b"ba")]
    body, payload = roundtrip(protocol.encode_task([(1, H1, Kind.CALL, 0, frames)]), MsgType.TASK)
    (item,) = protocol.decode_task(body, payload)
    assert item.frames[0] is frames[0]
    assert item.frames[1] is frames[1]


# ---------------------------------------------------------------------------------------------
# Batch validation

BATCHES: list[tuple[str, Callable[..., list[Any]], Callable[..., Any], tuple[Any, ...]]] = [
    ("SUBMIT", protocol.encode_submit, protocol.decode_submit, (1, H1, Kind.CALL)),
    ("TASK", protocol.encode_task, protocol.decode_task, (1, H1, Kind.CALL, 0)),
    ("RESULT", protocol.encode_result, protocol.decode_result, (1, Status.OK)),
]


@pytest.mark.parametrize(("what", "encode", "decode", "fields"), BATCHES)
def test_batch_count_disagreeing_with_bytes_is_refused(
    what: str, encode: Callable[..., list[Any]], decode: Callable[..., Any], fields: tuple[Any, ...]
) -> None:
    frames = encode([(*fields, [b"p"]), (*fields, [b"q"])])
    _, body = protocol.parse_header(frames)
    count = struct.unpack_from("!I", body)[0]
    assert count == 2
    rows = body[4:]
    for bad in (
        struct.pack("!I", 3) + rows,  # says more items than it holds
        struct.pack("!I", 1) + rows,  # says fewer
        body[:-1],  # a truncated row
        body + b"\x00",  # a stray byte
    ):
        with pytest.raises(ProtocolError, match=f"{what}: header says"):
            decode(bad, frames[1:])
    for short in (b"", b"\x00\x00\x00"):
        with pytest.raises(ProtocolError, match=f"{what}: header too short"):
            decode(short, [])


@pytest.mark.parametrize(("what", "encode", "decode", "fields"), BATCHES)
def test_batch_frame_totals_disagreeing_with_payload_are_refused(
    what: str, encode: Callable[..., list[Any]], decode: Callable[..., Any], fields: tuple[Any, ...]
) -> None:
    frames = encode([(*fields, [b"p", b"p2"]), (*fields, [])])
    _, body = protocol.parse_header(frames)
    payload = frames[1:]
    assert len(decode(body, payload)) == 2  # the untouched message is fine
    for wrong in (payload[:1], [], [*payload, b"extra"]):
        with pytest.raises(ProtocolError, match=f"{what}: items own a different number"):
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
        (protocol.decode_welcome, 12),
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

_LAYOUT_SIZES = {MsgType.SUBMIT: 27, MsgType.TASK: 29, MsgType.RESULT: 11}


def decode_any(frames: Sequence[Any]) -> object:
    """What the router (or a peer) does with a message: header, then the matching decoder."""
    type_, body = protocol.parse_header(frames)
    payload = list(frames[1:])
    if type_ is MsgType.HELLO:
        return protocol.decode_hello(body)
    if type_ is MsgType.WELCOME:
        return protocol.decode_welcome(body)
    if type_ is MsgType.SUBMIT:
        return protocol.decode_submit(body, payload)
    if type_ is MsgType.TASK:
        return protocol.decode_task(body, payload)
    if type_ is MsgType.RESULT:
        return protocol.decode_result(body, payload)
    if type_ is MsgType.FN_FETCH:
        return protocol.decode_fn_fetch(body)
    if type_ is MsgType.FN_BODY:
        return protocol.decode_fn_body(body, payload)
    if type_ is MsgType.CREDIT:
        return protocol.decode_credit(body)
    if type_ is MsgType.ERROR:
        return protocol.decode_error(body)
    if type_ is MsgType.STATS:
        return protocol.decode_stats(body)
    return None  # HEARTBEAT and DISCONNECT carry nothing to decode


def random_message(rng: random.Random) -> list[bytes]:
    """A random frame list; most headers are squall-shaped so that the decoders get exercised."""
    n_payload = rng.choice([0, 0, 1, 1, 2, 3, rng.randrange(0, 12)])
    payload = [rng.randbytes(rng.randrange(0, 8)) for _ in range(n_payload)]
    shape = rng.random()
    if shape < 0.2:  # anything at all
        header = rng.randbytes(rng.randrange(0, 40))
    elif shape < 0.3:  # valid magic, random version and type
        header = MAGIC + rng.randbytes(rng.randrange(0, 30))
    else:  # a real prefix, random body
        type_ = rng.choice([*MsgType, 0, 13])
        body_len = rng.randrange(0, 40)
        if type_ in _LAYOUT_SIZES and rng.random() < 0.5:
            # Consistent count and row bytes, so the frame-total check is reached too.
            count = rng.randrange(0, 4)
            rows = rng.randbytes(count * _LAYOUT_SIZES[type_])
            body = struct.pack("!I", count) + rows
        else:
            body = rng.randbytes(body_len)
        header = prefix(type_=type_) + body
    if rng.random() < 0.05:
        return []
    return [header, *payload]


def test_fuzz_only_protocol_errors() -> None:
    rng = random.Random(20240611)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(2000):
        frames = random_message(rng)
        try:
            decode_any(frames)
        except ProtocolError as exc:
            assert isinstance(exc.frames, list)
            outcomes["refused"] += 1
        else:
            outcomes["ok"] += 1
    # Both paths were exercised: the generator is not trivially all-garbage or all-valid.
    assert outcomes["ok"] > 50
    assert outcomes["refused"] > 500


def test_fuzz_random_bytes_through_parse_header() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        frames = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 4))]
        try:
            decode_any(frames)
        except ProtocolError:
            pass


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
        protocol.encode_submit([(1, H1, Kind.CALL, [b"x", b"y"])]),
        protocol.encode_task([(1, H1, Kind.CALL, 0, [b"x"])]),
        protocol.encode_result([(1, Status.OK, [b"x"]), (2, Status.ERROR, [])]),
    ]
    for frames in messages:
        decode_any(frames)  # the intact message decodes
        header = frames[0]
        for cut in range(len(header)):
            try:
                decode_any([header[:cut], *frames[1:]])
            except ProtocolError:
                pass
        for payload in ([], [*frames[1:], b"extra"]):
            try:
                decode_any([header, *payload])
            except ProtocolError:
                pass


def test_stats_json_is_sorted_and_plain() -> None:
    (frame,) = protocol.encode_stats({"b": 1, "a": 2})
    _, body = protocol.parse_header([frame])
    assert body == json.dumps({"a": 2, "b": 1}, sort_keys=True).encode()
