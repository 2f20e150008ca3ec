"""squall's wire protocol: the only module that knows frame order, message types and version.

A message is a list of frames as a DEALER sends it (a ROUTER sees the peer's routing id in front)::

    [header, *payload]

The header is fixed-layout binary (``struct``, network byte order): the magic ``b"SQ"``, the
protocol version, the message type, then the fields of that type. The router reads headers only;
payload frames (pickles, function bodies, out-of-band buffers) pass through it as opaque bytes, so
the router never needs ``pickle``.

Batches: SUBMIT, TASK and RESULT carry many items in one message, which is what lets squall move
tens of thousands of small tasks a second through Python processes. Their header holds an item
count and, per item, its fixed fields and how many payload frames it owns; the payload frames
follow in item order.

Developer notes: decoding validates everything the router relies on (counts, frame totals, sizes)
and raises :class:`ProtocolError` with the frames attached, so a malformed message is logged and
dropped rather than crashing a loop. Encoders trust their caller.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from squall.errors import ProtocolError

MAGIC = b"SQ"
VERSION = 1

#: Anything ``zmq`` accepts as a frame: bytes, a ``zmq.Frame``, a buffer.
Frame = Any  # bytes, a zmq.Frame, or any buffer zmq accepts


class MsgType(enum.IntEnum):
    """Every message type squall sends. The direction is in the comment."""

    HELLO = 1  # client|worker -> router: role, pid, capacity
    WELCOME = 2  # router -> client|worker: heartbeat interval, live worker count
    SUBMIT = 3  # client -> router: batch of tasks
    TASK = 4  # router -> worker: batch of tasks
    RESULT = 5  # worker -> router -> client: batch of outcomes
    FN_FETCH = 6  # worker -> router, router -> client: "send me the body of this hash"
    FN_BODY = 7  # client -> router -> worker: a cloudpickled function body by hash
    CREDIT = 8  # worker -> router: can take this many more tasks
    HEARTBEAT = 9  # both ways: still alive
    DISCONNECT = 10  # both ways: leaving now
    ERROR = 11  # router -> peer: your message was refused, and why
    STATS = 12  # client -> router (empty), router -> client (JSON counters)


class Role(enum.IntEnum):
    """Who says HELLO."""

    CLIENT = 1
    WORKER = 2


class Status(enum.IntEnum):
    """Outcome of one task in a RESULT item."""

    OK = 0
    ERROR = 1


class ErrorCode(enum.IntEnum):
    """Why the router refused a message, in an ERROR reply."""

    BAD_MESSAGE = 1  # malformed: logged and dropped
    VERSION = 2  # another protocol version
    UNKNOWN_PEER = (
        3  # the router does not know you (it restarted, or declared you dead): HELLO again
    )
    REFUSED = 4  # well-formed, but not allowed (e.g. a client sending worker messages)


class Kind(enum.IntEnum):
    """What a task asks the worker to do with its function."""

    CALL = 0


HASH_SIZE = 16

_PREFIX = struct.Struct("!2sBB")
_COUNT = struct.Struct("!I")
_HELLO = struct.Struct("!BII")
_WELCOME = struct.Struct("!dI")
_HASH = struct.Struct(f"!{HASH_SIZE}s")
_CREDIT = struct.Struct("!I")
# Per-item layouts of the batch messages.
_SUBMIT_ITEM = struct.Struct(f"!Q{HASH_SIZE}sBH")  # task id, fn hash, kind, n frames
_TASK_ITEM = struct.Struct(f"!Q{HASH_SIZE}sBHH")  # task id, fn hash, kind, attempt, n frames
_RESULT_ITEM = struct.Struct("!QBH")  # task id, status, n frames

_HEADERS = {t: _PREFIX.pack(MAGIC, VERSION, t) for t in MsgType}


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version."""

    def __init__(self, version: int, frames: list[bytes]) -> None:
        super().__init__(f"protocol version {version} is not supported (this is {VERSION})", frames)
        self.version = version


# ---------------------------------------------------------------------------------------------
# Decoded shapes


class Hello(NamedTuple):
    role: Role
    pid: int
    capacity: int


class Welcome(NamedTuple):
    heartbeat_interval: float
    workers: int


class SubmitItem(NamedTuple):
    task_id: int
    fn_hash: bytes
    kind: int
    frames: list[Frame]


class TaskItem(NamedTuple):
    task_id: int
    fn_hash: bytes
    kind: int
    attempt: int
    frames: list[Frame]


class ResultItem(NamedTuple):
    task_id: int
    status: int
    frames: list[Frame]


# ---------------------------------------------------------------------------------------------
# Header


def parse_header(frames: Sequence[Frame]) -> tuple[MsgType, bytes]:
    """Read the header frame of ``frames``: check magic and version, return (type, body).

    Raises:
        ProtocolError: the message is empty, too short, or not squall's.
        VersionMismatch: it is squall's, but another protocol version.
    """
    if not frames:
        raise ProtocolError("empty message", [])
    header = bytes(frames[0])
    if len(header) < _PREFIX.size or header[:2] != MAGIC:
        raise ProtocolError("not a squall message (bad magic)", _raw(frames))
    _, version, type_ = _PREFIX.unpack_from(header)
    if version != VERSION:
        raise VersionMismatch(version, _raw(frames))
    try:
        return MsgType(type_), header[_PREFIX.size :]
    except ValueError:
        raise ProtocolError(f"unknown message type {type_}", _raw(frames)) from None


def _raw(frames: Sequence[Frame]) -> list[bytes]:
    """The first few frames as bytes, for error reports; big frames are cut."""
    return [bytes(f)[:256] for f in list(frames)[:8]]


def _fixed(body: bytes, layout: struct.Struct, what: str) -> tuple[Any, ...]:
    if len(body) != layout.size:
        raise ProtocolError(f"{what}: header body is {len(body)} bytes, expected {layout.size}")
    return layout.unpack(body)


# ---------------------------------------------------------------------------------------------
# Simple messages


def encode_hello(role: Role, pid: int, capacity: int = 0) -> list[Frame]:
    return [_HEADERS[MsgType.HELLO] + _HELLO.pack(role, pid, capacity)]


def decode_hello(body: bytes) -> Hello:
    role, pid, capacity = _fixed(body, _HELLO, "HELLO")
    try:
        return Hello(Role(role), pid, capacity)
    except ValueError:
        raise ProtocolError(f"HELLO: unknown role {role}") from None


def encode_welcome(heartbeat_interval: float, workers: int) -> list[Frame]:
    return [_HEADERS[MsgType.WELCOME] + _WELCOME.pack(heartbeat_interval, workers)]


def decode_welcome(body: bytes) -> Welcome:
    return Welcome(*_fixed(body, _WELCOME, "WELCOME"))


def encode_fn_fetch(fn_hash: bytes) -> list[Frame]:
    return [_HEADERS[MsgType.FN_FETCH] + _HASH.pack(fn_hash)]


def decode_fn_fetch(body: bytes) -> bytes:
    return bytes(_fixed(body, _HASH, "FN_FETCH")[0])


def encode_fn_body(fn_hash: bytes, body: Frame) -> list[Frame]:
    """A function body by hash; an empty body means "nobody has it any more"."""
    return [_HEADERS[MsgType.FN_BODY] + _HASH.pack(fn_hash), body]


def decode_fn_body(body: bytes, payload: Sequence[Frame]) -> tuple[bytes, Frame]:
    fn_hash = bytes(_fixed(body, _HASH, "FN_BODY")[0])
    if len(payload) != 1:
        raise ProtocolError(f"FN_BODY: expected 1 payload frame, got {len(payload)}")
    return fn_hash, payload[0]


def encode_credit(n: int) -> list[Frame]:
    return [_HEADERS[MsgType.CREDIT] + _CREDIT.pack(n)]


def decode_credit(body: bytes) -> int:
    return int(_fixed(body, _CREDIT, "CREDIT")[0])


def encode_heartbeat() -> list[Frame]:
    return [_HEADERS[MsgType.HEARTBEAT]]


def encode_disconnect() -> list[Frame]:
    return [_HEADERS[MsgType.DISCONNECT]]


def encode_error(code: ErrorCode, reason: str) -> list[Frame]:
    # Code and reason go in the header so that a peer of any version can read them: magic,
    # version and type stay where they are in every version.
    return [_HEADERS[MsgType.ERROR] + bytes([code]) + reason.encode("utf-8", "replace")[:4096]]


def decode_error(body: bytes) -> tuple[int, str]:
    if not body:
        raise ProtocolError("ERROR: no code")
    return body[0], body[1:].decode("utf-8", "replace")


def encode_stats_request() -> list[Frame]:
    return [_HEADERS[MsgType.STATS]]


def encode_stats(stats: dict[str, Any]) -> list[Frame]:
    return [_HEADERS[MsgType.STATS] + json.dumps(stats, sort_keys=True).encode()]


def decode_stats(body: bytes) -> dict[str, Any]:
    try:
        stats = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"STATS: bad JSON: {exc}") from None
    if not isinstance(stats, dict):
        raise ProtocolError("STATS: not a JSON object")
    return stats


# ---------------------------------------------------------------------------------------------
# Batches


def _encode_batch(
    type_: MsgType, layout: struct.Struct, rows: Iterable[tuple[Any, ...]], payload: list[Frame]
) -> list[Frame]:
    packed = [layout.pack(*row) for row in rows]
    return [_HEADERS[type_] + _COUNT.pack(len(packed)) + b"".join(packed), *payload]


def _decode_batch(
    body: bytes, payload: Sequence[Frame], layout: struct.Struct, what: str
) -> list[tuple[Any, ...]]:
    """Split a batch header into rows; check that the frame counts (last field) add up."""
    if len(body) < _COUNT.size:
        raise ProtocolError(f"{what}: header too short")
    (count,) = _COUNT.unpack_from(body)
    rows_bytes = body[_COUNT.size :]
    if len(rows_bytes) != count * layout.size:
        raise ProtocolError(f"{what}: header says {count} items but holds {len(rows_bytes)} bytes")
    rows = list(layout.iter_unpack(rows_bytes))
    if sum(row[-1] for row in rows) != len(payload):
        raise ProtocolError(f"{what}: items own a different number of frames than arrived")
    return rows


def _split(rows: list[tuple[Any, ...]], payload: Sequence[Frame]) -> Iterable[list[Frame]]:
    at = 0
    for row in rows:
        n = row[-1]
        yield list(payload[at : at + n])
        at += n


def encode_submit(items: Iterable[tuple[int, bytes, int, Sequence[Frame]]]) -> list[Frame]:
    """SUBMIT: ``items`` are (task id, fn hash, kind, frames)."""
    rows: list[tuple[Any, ...]] = []
    payload: list[Frame] = []
    for task_id, fn_hash, kind, frames in items:
        rows.append((task_id, fn_hash, kind, len(frames)))
        payload.extend(frames)
    return _encode_batch(MsgType.SUBMIT, _SUBMIT_ITEM, rows, payload)


def decode_submit(body: bytes, payload: Sequence[Frame]) -> list[SubmitItem]:
    rows = _decode_batch(body, payload, _SUBMIT_ITEM, "SUBMIT")
    return [
        SubmitItem(row[0], row[1], row[2], frames)
        for row, frames in zip(rows, _split(rows, payload), strict=True)
    ]


def encode_task(items: Iterable[tuple[int, bytes, int, int, Sequence[Frame]]]) -> list[Frame]:
    """TASK: ``items`` are (task id, fn hash, kind, attempt, frames)."""
    rows: list[tuple[Any, ...]] = []
    payload: list[Frame] = []
    for task_id, fn_hash, kind, attempt, frames in items:
        rows.append((task_id, fn_hash, kind, attempt, len(frames)))
        payload.extend(frames)
    return _encode_batch(MsgType.TASK, _TASK_ITEM, rows, payload)


def decode_task(body: bytes, payload: Sequence[Frame]) -> list[TaskItem]:
    rows = _decode_batch(body, payload, _TASK_ITEM, "TASK")
    return [
        TaskItem(row[0], row[1], row[2], row[3], frames)
        for row, frames in zip(rows, _split(rows, payload), strict=True)
    ]


def encode_result(items: Iterable[tuple[int, int, Sequence[Frame]]]) -> list[Frame]:
    """RESULT: ``items`` are (task id, status, frames)."""
    rows: list[tuple[Any, ...]] = []
    payload: list[Frame] = []
    for task_id, status, frames in items:
        rows.append((task_id, status, len(frames)))
        payload.extend(frames)
    return _encode_batch(MsgType.RESULT, _RESULT_ITEM, rows, payload)


def decode_result(body: bytes, payload: Sequence[Frame]) -> list[ResultItem]:
    rows = _decode_batch(body, payload, _RESULT_ITEM, "RESULT")
    return [
        ResultItem(row[0], row[1], frames)
        for row, frames in zip(rows, _split(rows, payload), strict=True)
    ]
