"""squall's wire protocol: the only module that knows frame order, message types and version.

docs/protocol.md describes the same for implementers in other languages; keep the two in step.

A message is a list of frames as a DEALER sends it (a ROUTER sees the peer's routing id in front)::

    [header, *payload]

The header is fixed-layout binary (``struct``, network byte order): the magic ``b"SQ"``, the
protocol version, the message type, then the fields of that type. The router reads headers only;
payload frames (pickles, function bodies, out-of-band buffers) pass through it as opaque bytes, so
the router never needs ``pickle``.

Batches: SUBMIT, TASK, RESULT, ITEM, ACK, CANCEL and STARTED carry many items in one message,
which is what lets squall move tens of thousands of small tasks a second through Python
processes. Their header holds an item count and, per item, its fixed fields and how many payload
frames it owns; the payload frames follow in item order. SUBMIT and TASK add a section after the
rows: the dependencies of each item (client task ids in SUBMIT; each dependency's status and
frame count in TASK, whose outcome frames follow the item's own). Small stream values travel
packed, many to a frame (:func:`pack_values`).

Developer notes: decoding validates everything the router relies on (counts, frame totals, sizes)
and raises :class:`ProtocolError` with the frames attached, so a malformed message is logged and
dropped rather than crashing a loop. Encoders trust their caller.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from squall.errors import ProtocolError, VersionMismatch

_T = TypeVar("_T")

MAGIC = b"SQ"
#: 2: WELCOME carries the router's epoch and whether it kept the peer's session; watchdog
#: heartbeats say how long the hub has been blocked; WITHDRAW.
#: 4: background tasks (ENQUEUE, ENQUEUED, QUERY, ANSWER); TASK items carry flags.
#: 5: SUBMIT and ENQUEUE items carry a route (queue, priority, not-before, expiry); a worker's
#: HELLO names the queues it serves.
#: 6: calls by name: a route may name a function, a worker's HELLO names the functions it
#: serves, and a call may carry JSON (Kind JSON_CALL, JSON_STREAM) instead of pickles.
#: 7: the operator's view: FN_BODY may name its function, a worker's HELLO names its host and
#: its HEARTBEAT its resident memory, EVENTS streams task and worker events to subscribers,
#: and RETRIED tells the router of a worker's retries (the ``retries`` option).
VERSION = 7

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
    ITEM = 13  # worker -> router -> client: batch of values yielded by streaming tasks
    ACK = 14  # client -> router -> worker: the reader consumed this many stream items
    CANCEL = 15  # client -> router -> worker: stop these tasks
    TIMEOUT = 16  # worker -> router: these tasks blocked me past their hard limit; I restart
    STARTED = 17  # router -> client: these tasks went to a worker (their futures are running)
    WITHDRAW = 18  # client -> router: drop these if not started; router -> client: which were
    CRASHED = 19  # worker node -> router: this worker process died on a signal, running these
    ENQUEUE = 20  # client -> router: background tasks to keep (or ids to attach to)
    ENQUEUED = 21  # router -> client: these background tasks are held (committed, with --data)
    QUERY = 22  # client -> router: a JSON request about kept tasks (info, cancel)
    ANSWER = 23  # router -> client: the JSON answer to a QUERY, under its request number
    EVENTS = 24  # router -> client: a batch of task and worker events (to subscribers only)
    RETRIED = 25  # worker -> router: these running tasks failed an attempt and will try again


class Role(enum.IntEnum):
    """Who says HELLO."""

    CLIENT = 1
    WORKER = 2


class Status(enum.IntEnum):
    """Outcome of one task in a RESULT item."""

    OK = 0
    ERROR = 1
    CANCELLED = 2  # the worker stopped it on request: frees the slot, reaches no one


class ErrorCode(enum.IntEnum):
    """Why the router refused a message, in an ERROR reply."""

    BAD_MESSAGE = 1  # malformed: logged and dropped
    VERSION = 2  # another protocol version
    UNKNOWN_PEER = (
        3  # the router does not know you (it restarted, or declared you dead): HELLO again
    )
    REFUSED = 4  # well-formed, but not allowed (e.g. a client sending worker messages)
    CUT_OFF = 5  # the router stopped serving you (key revoked, reading too slowly): give up


class FailureCode(enum.IntEnum):
    """Why a task failed, in its error outcome's summary (``code``).

    The caller raises the exception class ``squall.errors`` maps the code to, so no exception
    is ever found by name. The numbers are wire facts: never reuse one.
    """

    RAISED = 0  # the task raised: the pickled exception (or TaskFailed) is what the caller gets
    WORKER_LOST = 1  # its worker died while running it, too often to try again
    TASK_TIMEOUT = 2  # it ran past its time limit
    QUEUE_FULL = 3  # the router holds all its limits allow (count or bytes): try again later
    TASK_TOO_LARGE = 4  # this one task is bigger than the router accepts
    UNKNOWN_DEPENDENCY = 5  # a task id it depends on is unknown to the router
    UNKNOWN_FUNCTION = 6  # its function body hash was never uploaded
    DEPENDENCY_FAILED = 7  # a task it depends on failed or was cancelled
    CANCELLED = 8  # cancelled before it could finish
    TASK_EXPIRED = 9  # its deadline passed before it could start
    TASK_NOT_FOUND = 10  # attached to an id no kept task has (never enqueued, or expired)


class TaskFlag(enum.IntFlag):
    """Bits of a TASK item's flags."""

    #: a background task, kept by the router: a worker that finished it while the router was
    #: away sends its result again to the restarted router, so that it is not run twice
    KEPT = 1


class EnqueueFlag(enum.IntFlag):
    """Bits of an ENQUEUE item's flags."""

    #: only attach to the task with this id (no payload): its outcome, or TASK_NOT_FOUND
    ATTACH = 1


class Kind(enum.IntEnum):
    """What a task asks the worker to do with its function, and how its values are encoded.

    Bit 0: a stream. Bit 1: JSON: the call's one frame is ``{"args": [...], "kwargs": {...}}``
    and each value (result, yielded value) is one JSON frame; an error outcome has an empty
    frame in place of the pickled exception. Only calls by name may be JSON.
    """

    CALL = 0  # one result
    STREAM = 1  # a generator: each yield as an ITEM, then an empty RESULT
    JSON_CALL = 2
    JSON_STREAM = 3


#: the bits of a task's kind (see :class:`Kind`)
KIND_STREAM = 1
KIND_JSON = 2


HASH_SIZE = 16
#: bytes of a task id (``squall.ids``: 48-bit milliseconds, 80 random bits)
ID_SIZE = 16
#: items (tasks, results, stream values) per message at most: senders split longer batches
MAX_ITEMS = 1000


def batches(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``items`` in slices of at most MAX_ITEMS: one slice per message."""
    for start in range(0, len(items), MAX_ITEMS):
        yield items[start : start + MAX_ITEMS]


def function_hash(body: bytes | memoryview) -> bytes:
    """The content hash a function body is known by on the wire: BLAKE2b, HASH_SIZE bytes.

    Peers check it (the router refuses a body planted under another's hash), so every
    implementation computes it the same way. (hashlib is imported here, not with the module:
    with it comes OpenSSL's libcrypto, 3 MB resident in worker processes, which never hash.)
    """
    import hashlib

    return hashlib.blake2b(body, digest_size=HASH_SIZE).digest()


#: bytes of randomness in a peer's routing id (see :func:`new_peer_id`)
PEER_ID_SIZE = 16


def new_peer_id() -> bytes:
    """A routing id for a client or worker socket: 16 random bytes, the first never zero.

    libzmq gives a socket without an id of its own a 5-byte id from a counter (``00`` then 4
    bytes), the same sequence in every process: a peer could predict and claim another's.
    Random ids cannot be guessed, and ids starting with zero stay libzmq's own.
    """
    while True:  # os.urandom, as secrets has it, without secrets' import of hashlib (see above)
        peer = os.urandom(PEER_ID_SIZE)
        if peer[0]:
            return peer


#: longest function name, in characters (letters, digits, ``_ - . :``)
MAX_FUNCTION_NAME = 200
#: most function names one worker serves
MAX_FUNCTIONS = 4096


def valid_function_name(name: str) -> bool:
    """Whether ``name`` can name a function: 1 to 200 letters, digits and ``_ - . :``, as
    ``images.resize`` or ``reports:daily``."""
    return 0 < len(name) <= MAX_FUNCTION_NAME and _QUEUE_CHARS.issuperset(name)


@functools.lru_cache(maxsize=4096)  # the same few names, called thousands of times a second
def name_hash(name: str) -> bytes:
    """The function hash a call by name carries: never a body's hash (the body hashes have no
    such prefix), so a worker finds a function it serves by name where it finds bodies."""
    return function_hash(b"squall function name\0" + name.encode())


def is_peer_id(peer: bytes) -> bool:
    """Whether ``peer`` has the shape of an id from :func:`new_peer_id` (a watchdog's id adds a
    suffix): only such peers may say HELLO, so no client or worker ever has a libzmq id."""
    return PEER_ID_SIZE <= len(peer) <= 255 and peer[0] != 0


_PREFIX = struct.Struct("!2sBB")
_COUNT = struct.Struct("!I")
_HELLO = struct.Struct("!BII")
_WELCOME = struct.Struct("!dIQB")
_BLOCKED = struct.Struct("!IQ")  # hub blocked for ms, highest task id the hub has received
_RSS = struct.Struct("!Q")  # a worker's own heartbeat: its resident memory in bytes
_HASH = struct.Struct(f"!{HASH_SIZE}s")
_CREDIT = struct.Struct("!I")
# Per-item layouts of the batch messages.
#: id, hash, kind, window, n deps, n frames, route bytes
_SUBMIT_ITEM = struct.Struct(f"!Q{HASH_SIZE}sBIHHH")
# ... flags, attempt, window, n deps, n own frames
_TASK_ITEM = struct.Struct(f"!Q{HASH_SIZE}sBBHIHH")
#: ENQUEUE: client task id, task id, hash, kind, flags, window, keep (s), name bytes, n frames,
#: route bytes
_ENQUEUE_ITEM = struct.Struct(f"!Q{ID_SIZE}s{HASH_SIZE}sBBIdHHH")
_REQUEST = struct.Struct("!Q")  # QUERY and ANSWER: the request number
_DEP = struct.Struct("!BH")  # a dependency's outcome in a TASK: status, n frames
_RESULT_ITEM = struct.Struct("!QBH")  # task id, status, n frames
_ITEM_ITEM = struct.Struct("!QIBH")  # task id, n values, packed, n frames
_VALUE_LEN = struct.Struct("!I")
_ACK_ITEM = struct.Struct("!QI")  # task id, items consumed
_CANCEL_ITEM = struct.Struct("!Q")  # task id
_WITHDRAW_ITEM = struct.Struct("!QB")  # task id, withdrawn (in the router's answer)
_RETRIED_ITEM = struct.Struct("!QH")  # task id, the attempt that failed (1, 2, ...)

_HEADERS = {t: _PREFIX.pack(MAGIC, VERSION, t) for t in MsgType}


# ---------------------------------------------------------------------------------------------
# Decoded shapes


class Hello(NamedTuple):
    role: Role
    pid: int
    capacity: int
    #: a client's worker group: only workers whose key is in that group may run its tasks
    group: str = ""
    #: a worker's queues: it is sent only tasks of these
    queues: tuple[str, ...] = ()
    #: the functions a worker serves by name (``squall worker --import``)
    functions: tuple[str, ...] = ()
    #: the host a worker runs on, for people (``squall status``)
    host: str = ""


#: bytes of a host name in a worker's HELLO
MAX_HOST = 255


def _function_names(frame: Frame) -> tuple[str, ...]:
    if not len(frame):
        return ()
    try:
        names = tuple(bytes(frame).decode().split(","))
    except UnicodeDecodeError:
        raise ProtocolError("HELLO: the functions frame is not UTF-8") from None
    if len(names) > MAX_FUNCTIONS or not all(valid_function_name(n) for n in names):
        raise ProtocolError(f"HELLO: a worker serves up to {MAX_FUNCTIONS} valid function names")
    return names


class Welcome(NamedTuple):
    heartbeat_interval: float
    workers: int
    #: random per router process: a new epoch means a restarted router, which holds nothing
    epoch: int = 0
    #: the router still held this peer's session (its tasks): a client need not resubmit
    resumed: bool = False


class Heartbeat(NamedTuple):
    #: the worker a watchdog speaks for; empty when the sender speaks for itself
    on_behalf_of: bytes = b""
    #: how long the worker's hub has been blocked (a watchdog's report), in milliseconds
    blocked_ms: int = 0
    #: the highest router task id the worker's hub has received: later ones sit unread
    last_task: int = 0
    #: a worker's own beat: its resident memory in bytes (0: not said)
    rss: int = 0


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
        raise VersionMismatch(version, VERSION, _raw(frames))
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


#: longest worker group name, in UTF-8 bytes
MAX_GROUP = 64


def encode_hello(
    role: Role,
    pid: int,
    capacity: int = 0,
    group: str = "",
    queues: Sequence[str] = (),
    functions: Sequence[str] = (),
    host: str = "",
) -> list[Frame]:
    """HELLO; a payload frame names a client's worker group, or a worker's queues (comma
    separated; none: the default queue); a worker's second frame, the function names it
    serves (comma separated, maybe none), and its third the host it runs on."""
    header = _HEADERS[MsgType.HELLO] + _HELLO.pack(role, pid, capacity)
    if role == Role.WORKER and (functions or host):
        frames = [header, ",".join(queues or (DEFAULT_QUEUE,)).encode()]
        frames.append(",".join(functions).encode())
        return frames + ([host.encode()[:MAX_HOST]] if host else [])
    named = ",".join(queues) if role == Role.WORKER else group
    return [header, named.encode()] if named else [header]


def decode_hello(body: bytes, payload: Sequence[Frame] = ()) -> Hello:
    role, pid, capacity = _fixed(body, _HELLO, "HELLO")
    try:
        role = Role(role)
    except ValueError:
        raise ProtocolError(f"HELLO: unknown role {role}") from None
    if len(payload) > (3 if role == Role.WORKER else 1):
        raise ProtocolError("HELLO: unexpected frames")
    if not payload:
        return Hello(role, pid, capacity, "", (DEFAULT_QUEUE,) if role == Role.WORKER else ())
    raw = bytes(payload[0])
    try:
        named = raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError("HELLO: the name frame is not UTF-8") from None
    if role == Role.WORKER:
        queues = tuple(named.split(","))
        if not all(valid_queue(q) for q in queues) or len(queues) > MAX_QUEUES:
            raise ProtocolError(f"HELLO: a worker serves 1 to {MAX_QUEUES} valid queue names")
        functions = _function_names(payload[1]) if len(payload) >= 2 else ()
        host = bytes(payload[2])[:MAX_HOST].decode("utf-8", "replace") if len(payload) == 3 else ""
        return Hello(role, pid, capacity, "", queues, functions, host)
    if not 0 < len(raw) <= MAX_GROUP or not named.isprintable():
        raise ProtocolError(f"HELLO: a group name has 1 to {MAX_GROUP} printable bytes")
    return Hello(role, pid, capacity, named)


#: the queue of a task that names none, and of a worker that names none
DEFAULT_QUEUE = "default"
#: longest queue name, in characters (letters, digits, ``_ - . :``)
MAX_QUEUE_NAME = 64
#: most queues one worker serves
MAX_QUEUES = 64
_QUEUE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


def valid_queue(name: str) -> bool:
    """Whether ``name`` can name a queue: 1 to 64 letters, digits and ``_ - . :``."""
    return 0 < len(name) <= MAX_QUEUE_NAME and _QUEUE_CHARS.issuperset(name)


def encode_welcome(
    heartbeat_interval: float, workers: int, epoch: int = 0, resumed: bool = False
) -> list[Frame]:
    body = _WELCOME.pack(heartbeat_interval, workers, epoch, resumed)
    return [_HEADERS[MsgType.WELCOME] + body]


def decode_welcome(body: bytes) -> Welcome:
    interval, workers, epoch, resumed = _fixed(body, _WELCOME, "WELCOME")
    return Welcome(interval, workers, epoch, bool(resumed))


def encode_fn_fetch(fn_hash: bytes) -> list[Frame]:
    return [_HEADERS[MsgType.FN_FETCH] + _HASH.pack(fn_hash)]


def decode_fn_fetch(body: bytes) -> bytes:
    return bytes(_fixed(body, _HASH, "FN_FETCH")[0])


def encode_fn_body(fn_hash: bytes, body: Frame, name: str = "") -> list[Frame]:
    """A function body by hash; an empty body means "nobody has it any more". A client names
    the function (its qualified name, in a second frame): the router shows that name for
    every task of this hash, and never has to look into the body for it."""
    header = _HEADERS[MsgType.FN_BODY] + _HASH.pack(fn_hash)
    return [header, body, name.encode()[:MAX_NAME]] if name else [header, body]


def decode_fn_body(body: bytes, payload: Sequence[Frame]) -> tuple[bytes, Frame, str]:
    fn_hash = bytes(_fixed(body, _HASH, "FN_BODY")[0])
    if len(payload) not in (1, 2):
        raise ProtocolError(f"FN_BODY: expected 1 or 2 payload frames, got {len(payload)}")
    if len(payload) == 1:
        return fn_hash, payload[0], ""
    raw = bytes(payload[1])
    if len(raw) > MAX_NAME:
        raise ProtocolError(f"FN_BODY: a function's name has at most {MAX_NAME} bytes")
    return fn_hash, payload[0], raw.decode("utf-8", "replace")


def encode_credit(n: int) -> list[Frame]:
    return [_HEADERS[MsgType.CREDIT] + _CREDIT.pack(n)]


def decode_credit(body: bytes) -> int:
    return int(_fixed(body, _CREDIT, "CREDIT")[0])


def encode_heartbeat(
    on_behalf_of: bytes = b"", blocked_ms: int = 0, last_task: int = 0, rss: int = 0
) -> list[Frame]:
    """HEARTBEAT; a worker's watchdog thread names the worker it speaks for (its own socket
    has another identity), so a hub blocked by a long task does not look like a dead worker,
    and says how long the hub has been blocked, so that no new tasks go there meanwhile. A
    worker's own beat may say its resident memory (``rss``, bytes), for ``squall status``."""
    header = _HEADERS[MsgType.HEARTBEAT]
    if blocked_ms or last_task:
        header += _BLOCKED.pack(min(blocked_ms, 0xFFFFFFFF), last_task)
    elif rss and not on_behalf_of:
        header += _RSS.pack(rss)
    return [header, *([on_behalf_of] if on_behalf_of else [])]


def decode_heartbeat(body: bytes, payload: Sequence[Frame]) -> Heartbeat:
    if len(payload) > 1 or (body and len(body) not in (_BLOCKED.size, _RSS.size)):
        raise ProtocolError("HEARTBEAT: unexpected content")
    if len(body) == _RSS.size:
        if payload:
            raise ProtocolError("HEARTBEAT: a watchdog does not report memory")
        return Heartbeat(rss=_RSS.unpack(body)[0])
    if body and not payload:
        raise ProtocolError("HEARTBEAT: only a watchdog reports a blocked hub")
    on_behalf_of = bytes(payload[0]) if payload else b""
    blocked_ms, last_task = _BLOCKED.unpack(body) if body else (0, 0)
    return Heartbeat(on_behalf_of, blocked_ms, last_task)


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
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"STATS: bad JSON: {exc}") from None
    if not isinstance(stats, dict):
        raise ProtocolError("STATS: not a JSON object")
    return stats


# ---------------------------------------------------------------------------------------------
# Outcomes


def error_outcome(
    type_name: str,
    message: str,
    traceback: str = "",
    pickled: Sequence[Frame] = (b"",),
    function: str = "",
    code: FailureCode = FailureCode.RAISED,
) -> list[Frame]:
    """The frames of a failed task's outcome: a JSON summary, then the pickled exception.

    The summary lets the caller raise something meaningful when the exception cannot be
    unpickled (``code`` picks the class; ``type`` is the exception's name as text, for people
    and other languages), lets the router fail a task (a lost dependency, a worker that died
    mid-stream) without pickling anything (it sends an empty frame in place of the pickle),
    and lets it log a failure (``function``: the task's qualified name, when known).
    """
    summary: dict[str, Any] = {"code": int(code), "type": type_name, "message": message}
    summary["traceback"] = traceback
    if function:
        summary["function"] = function
    return [json.dumps(summary).encode(), *pickled]


def failure_outcome(code: FailureCode, message: str, function: str = "") -> list[Frame]:
    """An outcome the router (or a worker's squall code) makes itself: a code and a message,
    nothing pickled. Its ``type`` is the code's name in CamelCase (``squall.WorkerLost``),
    which is also the name of the exception class Python callers get."""
    name = "squall." + "".join(part.title() for part in code.name.split("_"))
    return error_outcome(name, message, function=function, code=code)


class ErrorSummary(NamedTuple):
    """The readable part of a failed task's outcome (see ``error_outcome``)."""

    code: FailureCode
    type: str
    message: str
    traceback: str
    function: str


def read_error_summary(frame: Frame) -> ErrorSummary:
    """Parse an outcome's summary; an unknown code reads as RAISED (the text still says what
    happened), anything malformed is a ProtocolError."""
    try:
        raw: Any = frame.buffer if hasattr(frame, "buffer") else frame
        summary = json.loads(bytes(raw))
        code = int(summary.get("code", 0))
        return ErrorSummary(
            FailureCode(code) if code in _FAILURE_CODES else FailureCode.RAISED,
            str(summary["type"]),
            str(summary["message"]),
            str(summary["traceback"]),
            str(summary.get("function", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ProtocolError(f"bad error summary: {exc!r}"[:200]) from None


_FAILURE_CODES = frozenset(int(c) for c in FailureCode)


# ---------------------------------------------------------------------------------------------
# Batches


def _encode_batch(
    type_: MsgType,
    layout: struct.Struct,
    rows: Sequence[tuple[Any, ...]],
    payload: list[Frame],
    extra: bytes = b"",
) -> list[Frame]:
    packed = b"".join([layout.pack(*row) for row in rows])
    return [_HEADERS[type_] + _COUNT.pack(len(rows)) + packed + extra, *payload]


def _decode_rows(
    body: bytes, layout: struct.Struct, what: str
) -> tuple[list[tuple[Any, ...]], bytes]:
    """Split a batch header into its rows and what follows them (the extra section)."""
    if len(body) < _COUNT.size:
        raise ProtocolError(f"{what}: header too short")
    (count,) = _COUNT.unpack_from(body)
    end = _COUNT.size + count * layout.size
    if len(body) < end:
        raise ProtocolError(f"{what}: header says {count} items but holds {len(body)} bytes")
    return list(layout.iter_unpack(body[_COUNT.size : end])), body[end:]


def _check_frames(what: str, owned: int, payload: Sequence[Frame]) -> None:
    if owned != len(payload):
        raise ProtocolError(f"{what}: items own {owned} frames but {len(payload)} arrived")


def _check_no_extra(what: str, extra: bytes) -> None:
    if extra:
        raise ProtocolError(f"{what}: {len(extra)} stray bytes after the items")


class Route(NamedTuple):
    """Where and when the router runs a task. Only the router reads it; the worker never
    sees it.

    Times are Unix seconds (the router holds a delayed task by the wall clock); 0 means
    none. ``priority``: higher first within the queue, FIFO among equals. ``function``: a
    call by name names its function here; the router sends it only to a worker serving that
    name, or, for a function published to the router, with the published body.
    """

    queue: str = DEFAULT_QUEUE
    priority: int = 0
    not_before: float = 0.0
    expires: float = 0.0
    function: str = ""


#: the route of a task that names none: the default queue, at once, for ever
DEFAULT_ROUTE = Route()
#: priority, not before, expires, queue name length, function name length
_ROUTE = struct.Struct("!iddBB")


def _encode_routes(routes: Sequence[Route | None]) -> tuple[list[int], bytes]:
    """Each item's route length (0: the default route) and the routes' section."""
    lengths, parts = [], []
    for route in routes:
        if route is None or route == DEFAULT_ROUTE:
            lengths.append(0)
            continue
        name, function = route.queue.encode(), route.function.encode()
        part = _ROUTE.pack(
            route.priority, route.not_before, route.expires, len(name), len(function)
        )
        part += name + function
        lengths.append(len(part))
        parts.append(part)
    return lengths, b"".join(parts)


def _decode_routes(section: bytes, lengths: Sequence[int], what: str) -> list[Route | None]:
    if len(section) != sum(lengths):
        raise ProtocolError(f"{what}: the routes section does not match the items")
    routes: list[Route | None] = []
    at = 0
    for length in lengths:
        if not length:
            routes.append(None)
            continue
        if length < _ROUTE.size:
            raise ProtocolError(f"{what}: a route is too short")
        priority, not_before, expires, name_len, function_len = _ROUTE.unpack_from(section, at)
        if length != _ROUTE.size + name_len + function_len:
            raise ProtocolError(f"{what}: a route's names do not fit it")
        names_at = at + _ROUTE.size
        try:
            queue = section[names_at : names_at + name_len].decode()
            function = section[names_at + name_len : at + length].decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"{what}: a queue or function name is not UTF-8") from None
        if not valid_queue(queue):
            raise ProtocolError(f"{what}: {queue!r} is not a valid queue name")
        if function and not valid_function_name(function):
            raise ProtocolError(f"{what}: {function!r} is not a valid function name")
        if not (math.isfinite(not_before) and math.isfinite(expires)):
            raise ProtocolError(f"{what}: a route's times must be finite")
        routes.append(Route(queue, priority, not_before, expires, function))
        at += length
    return routes


class SubmitItem(NamedTuple):
    task_id: int
    fn_hash: bytes
    kind: int
    window: int  # streams: items in flight before the generator pauses
    deps: tuple[int, ...]  # client task ids whose results this task takes as arguments
    frames: list[Frame]
    #: a background task's id (ID_SIZE bytes); empty for a task tied to its client (SUBMIT)
    key: bytes = b""
    #: background tasks: seconds to keep the outcome (0: the router's --result-ttl)
    keep: float = 0.0
    #: background tasks: the function's name, for people (task_info, logs)
    name: str = ""
    #: EnqueueFlag bits
    flags: int = 0
    #: queue, priority, delay and expiry; None for the default route
    route: Route | None = None


class TaskItem(NamedTuple):
    task_id: int
    fn_hash: bytes
    kind: int
    attempt: int
    window: int
    deps: list[tuple[int, list[Frame]]]  # (status, frames) of each dependency's outcome
    frames: list[Frame]
    flags: int = 0  # TaskFlag bits


class ResultItem(NamedTuple):
    task_id: int
    status: int
    frames: list[Frame]


class StreamItem(NamedTuple):
    """Streamed values of one task: ``n_values`` small pickles packed into one frame (see
    :func:`pack_values`), or one value's frames as they are (``packed`` false)."""

    task_id: int
    n_values: int
    packed: bool
    frames: list[Frame]


def encode_submit(items: Sequence[SubmitItem]) -> list[Frame]:
    rows: list[tuple[Any, ...]] = []
    payload: list[Frame] = []
    deps: list[int] = []
    lengths, routes = _encode_routes([item.route for item in items])
    for item, route_len in zip(items, lengths, strict=True):
        rows.append(
            (
                item.task_id,
                item.fn_hash,
                item.kind,
                item.window,
                len(item.deps),
                len(item.frames),
                route_len,
            )
        )
        payload.extend(item.frames)
        deps.extend(item.deps)
    extra = struct.pack(f"!{len(deps)}Q", *deps) + routes
    return _encode_batch(MsgType.SUBMIT, _SUBMIT_ITEM, rows, payload, extra)


def decode_submit(body: bytes, payload: Sequence[Frame]) -> list[SubmitItem]:
    rows, extra = _decode_rows(body, _SUBMIT_ITEM, "SUBMIT")
    n_deps = sum(row[4] for row in rows)
    need = 8 * n_deps + sum(row[6] for row in rows)
    if len(extra) != need:
        raise ProtocolError(f"SUBMIT: {n_deps} dependencies and their routes need {need} bytes")
    _check_frames("SUBMIT", sum(row[5] for row in rows), payload)
    deps = struct.unpack_from(f"!{n_deps}Q", extra)
    routes = _decode_routes(extra[8 * n_deps :], [row[6] for row in rows], "SUBMIT")
    items, at, dep_at = [], 0, 0
    for (task_id, fn_hash, kind, window, n_dep, n, _), route in zip(rows, routes, strict=True):
        items.append(
            SubmitItem(
                task_id,
                fn_hash,
                kind,
                window,
                deps[dep_at : dep_at + n_dep],
                list(payload[at : at + n]),
                route=route,
            )
        )
        at += n
        dep_at += n_dep
    return items


def encode_task(items: Sequence[TaskItem]) -> list[Frame]:
    rows, payload, dep_rows = [], [], []
    for item in items:
        rows.append(
            (
                item.task_id,
                item.fn_hash,
                item.kind,
                item.flags,
                item.attempt,
                item.window,
                len(item.deps),
                len(item.frames),
            )
        )
        payload.extend(item.frames)
        for status, frames in item.deps:
            dep_rows.append(_DEP.pack(status, len(frames)))
            payload.extend(frames)
    return _encode_batch(MsgType.TASK, _TASK_ITEM, rows, payload, b"".join(dep_rows))


def decode_task(body: bytes, payload: Sequence[Frame]) -> list[TaskItem]:
    rows, extra = _decode_rows(body, _TASK_ITEM, "TASK")
    n_deps = sum(row[6] for row in rows)
    if len(extra) != _DEP.size * n_deps:
        raise ProtocolError(f"TASK: {n_deps} dependencies need {_DEP.size * n_deps} bytes")
    dep_rows = list(_DEP.iter_unpack(extra))
    _check_frames("TASK", sum(row[7] for row in rows) + sum(d[1] for d in dep_rows), payload)
    items, at, dep_at = [], 0, 0
    for task_id, fn_hash, kind, flags, attempt, window, n_dep, n in rows:
        frames = list(payload[at : at + n])
        at += n
        deps = []
        for status, n_frames in dep_rows[dep_at : dep_at + n_dep]:
            deps.append((status, list(payload[at : at + n_frames])))
            at += n_frames
        dep_at += n_dep
        items.append(TaskItem(task_id, fn_hash, kind, attempt, window, deps, frames, flags))
    return items


def _encode_framed(
    type_: MsgType,
    layout: struct.Struct,
    rows: list[tuple[Any, ...]],
    frames: Iterable[Sequence[Frame]],
) -> list[Frame]:
    payload: list[Frame] = []
    for item_frames in frames:
        payload.extend(item_frames)
    return _encode_batch(type_, layout, rows, payload)


def _decode_framed(
    body: bytes, payload: Sequence[Frame], layout: struct.Struct, what: str
) -> list[tuple[tuple[Any, ...], list[Frame]]]:
    """Rows whose last field counts the payload frames each owns, paired with those frames."""
    rows, extra = _decode_rows(body, layout, what)
    _check_no_extra(what, extra)
    _check_frames(what, sum(row[-1] for row in rows), payload)
    out, at = [], 0
    for row in rows:
        out.append((row, list(payload[at : at + row[-1]])))
        at += row[-1]
    return out


def encode_result(items: Sequence[tuple[int, int, Sequence[Frame]]]) -> list[Frame]:
    """RESULT: ``items`` are (task id, status, frames)."""
    rows = [(task_id, status, len(frames)) for task_id, status, frames in items]
    return _encode_framed(MsgType.RESULT, _RESULT_ITEM, rows, (i[2] for i in items))


def decode_result(body: bytes, payload: Sequence[Frame]) -> list[ResultItem]:
    """RESULT's items. One pass, each item made by ``tuple.__new__`` (a NamedTuple's own
    ``__new__`` is a Python call): this runs for every outcome a client receives."""
    rows, extra = _decode_rows(body, _RESULT_ITEM, "RESULT")
    _check_no_extra("RESULT", extra)
    _check_frames("RESULT", sum(row[2] for row in rows), payload)
    frames = payload if type(payload) is list else list(payload)
    items, at = [], 0
    for task_id, status, n in rows:
        items.append(_new_tuple(ResultItem, (task_id, status, frames[at : at + n])))
        at += n
    return items


_new_tuple = tuple.__new__


def encode_items(items: Sequence[StreamItem]) -> list[Frame]:
    """ITEM: values streaming tasks yielded, in order."""
    rows = [(i.task_id, i.n_values, i.packed, len(i.frames)) for i in items]
    return _encode_framed(MsgType.ITEM, _ITEM_ITEM, rows, (i.frames for i in items))


def decode_items(body: bytes, payload: Sequence[Frame]) -> list[StreamItem]:
    items = []
    for row, frames in _decode_framed(body, payload, _ITEM_ITEM, "ITEM"):
        task_id, count, packed, _ = row
        if packed and len(frames) != 1 or not packed and count != 1:
            raise ProtocolError("ITEM: a packed item has one frame; an unpacked one, one value")
        items.append(StreamItem(task_id, count, bool(packed), frames))
    return items


def pack_values(pickles: Sequence[bytes]) -> bytes:
    """Many small pickled values in one frame, each behind its length.

    A stream of small values moves as a few frames per batch instead of one per value: the
    per-frame cost in every process is what limits small-item throughput.
    """
    return b"".join([_VALUE_LEN.pack(len(p)) + p for p in pickles])


def unpack_values(frame: Frame, count: int) -> list[memoryview]:
    """Split what :func:`pack_values` made back into ``count`` pickles (views, no copies)."""
    view = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
    values, at = [], 0
    for _ in range(count):
        if at + 4 > len(view):
            raise ProtocolError("ITEM: packed values end early")
        (size,) = _VALUE_LEN.unpack_from(view, at)
        at += 4
        if at + size > len(view):
            raise ProtocolError("ITEM: a packed value runs past the frame")
        values.append(view[at : at + size])
        at += size
    if at != len(view):
        raise ProtocolError("ITEM: bytes left after the packed values")
    return values


def encode_ack(acks: Sequence[tuple[int, int]]) -> list[Frame]:
    """ACK: (task id, how many more stream items the reader consumed)."""
    return _encode_batch(MsgType.ACK, _ACK_ITEM, acks, [])


def decode_ack(body: bytes, payload: Sequence[Frame]) -> list[tuple[int, int]]:
    rows, extra = _decode_rows(body, _ACK_ITEM, "ACK")
    _check_no_extra("ACK", extra)
    _check_frames("ACK", 0, payload)
    return [(row[0], row[1]) for row in rows]


def encode_timeout(worker: bytes, limit: str, task_ids: Sequence[int]) -> list[Frame]:
    """TIMEOUT: sent by a worker's watchdog for the worker it speaks for."""
    return _encode_batch(
        MsgType.TIMEOUT, _CANCEL_ITEM, [(t,) for t in task_ids], [worker, limit.encode()]
    )


def decode_timeout(body: bytes, payload: Sequence[Frame]) -> tuple[bytes, str, list[int]]:
    rows, extra = _decode_rows(body, _CANCEL_ITEM, "TIMEOUT")
    _check_no_extra("TIMEOUT", extra)
    _check_frames("TIMEOUT", 2, payload)
    return bytes(payload[0]), bytes(payload[1]).decode(errors="replace"), [r[0] for r in rows]


def _encode_ids(type_: MsgType, task_ids: Sequence[int]) -> list[Frame]:
    """A batch of bare task ids (STARTED, CANCEL, ENQUEUED)."""
    return _encode_batch(type_, _CANCEL_ITEM, [(t,) for t in task_ids], [])


def _decode_ids(body: bytes, payload: Sequence[Frame], what: str) -> list[int]:
    rows, extra = _decode_rows(body, _CANCEL_ITEM, what)
    _check_no_extra(what, extra)
    _check_frames(what, 0, payload)
    return [row[0] for row in rows]


def encode_started(task_ids: Sequence[int]) -> list[Frame]:
    """STARTED: these tasks were handed to a worker."""
    return _encode_ids(MsgType.STARTED, task_ids)


def decode_started(body: bytes, payload: Sequence[Frame]) -> list[int]:
    return _decode_ids(body, payload, "STARTED")


def encode_cancel(task_ids: Sequence[int]) -> list[Frame]:
    """CANCEL: stop these tasks (drop them if queued, interrupt them if running)."""
    return _encode_ids(MsgType.CANCEL, task_ids)


def decode_cancel(body: bytes, payload: Sequence[Frame]) -> list[int]:
    return _decode_ids(body, payload, "CANCEL")


def encode_crashed(worker: bytes, culprits: Sequence[int]) -> list[Frame]:
    """CRASHED: a worker node says its worker process ``worker`` died on a fatal signal while
    running the tasks ``culprits`` (empty: it could not tell which)."""
    return _encode_batch(MsgType.CRASHED, _CANCEL_ITEM, [(t,) for t in culprits], [worker])


def decode_crashed(body: bytes, payload: Sequence[Frame]) -> tuple[bytes, list[int]]:
    rows, extra = _decode_rows(body, _CANCEL_ITEM, "CRASHED")
    _check_no_extra("CRASHED", extra)
    _check_frames("CRASHED", 1, payload)
    return bytes(payload[0]), [row[0] for row in rows]


class Retried(NamedTuple):
    """A running task's attempt failed and it will run again (a worker's ``retries``)."""

    task_id: int
    attempt: int
    error_type: str
    error_message: str


def encode_retried(items: Sequence[Retried]) -> list[Frame]:
    """RETRIED: per task, the attempt that failed; one JSON frame per task, ``{"type",
    "message"}`` of its error (text: nothing pickled), for the router's events."""
    rows = [(item.task_id, min(item.attempt, 0xFFFF)) for item in items]
    frames = [
        json.dumps({"type": item.error_type, "message": item.error_message[:1000]}).encode()
        for item in items
    ]
    return _encode_batch(MsgType.RETRIED, _RETRIED_ITEM, rows, frames)


def decode_retried(body: bytes, payload: Sequence[Frame]) -> list[Retried]:
    rows, extra = _decode_rows(body, _RETRIED_ITEM, "RETRIED")
    _check_no_extra("RETRIED", extra)
    _check_frames("RETRIED", len(rows), payload)
    items = []
    for (task_id, attempt), frame in zip(rows, payload, strict=True):
        error = _json_frame(frame, "RETRIED")
        if not isinstance(error, dict):
            raise ProtocolError("RETRIED: an error is a JSON object")
        items.append(
            Retried(
                task_id, attempt, str(error.get("type", ""))[:200], str(error.get("message", ""))
            )
        )
    return items


def encode_withdraw(answers: Sequence[tuple[int, bool]]) -> list[Frame]:
    """WITHDRAW: from a client, drop these tasks only if no worker has them yet (the flag is
    ignored); from the router, for each, whether it was dropped (it never ran, never will)."""
    return _encode_batch(MsgType.WITHDRAW, _WITHDRAW_ITEM, [(t, w) for t, w in answers], [])


def decode_withdraw(body: bytes, payload: Sequence[Frame]) -> list[tuple[int, bool]]:
    rows, extra = _decode_rows(body, _WITHDRAW_ITEM, "WITHDRAW")
    _check_no_extra("WITHDRAW", extra)
    _check_frames("WITHDRAW", 0, payload)
    return [(task_id, bool(withdrawn)) for task_id, withdrawn in rows]


# ---------------------------------------------------------------------------------------------
# Background tasks


#: longest function name an ENQUEUE item carries, in UTF-8 bytes (longer names are cut)
MAX_NAME = 255


def encode_enqueue(items: Sequence[SubmitItem]) -> list[Frame]:
    """ENQUEUE: background tasks for the router to keep (``key`` set on each item), or, with
    the ATTACH flag and no frames, ids of kept tasks whose outcome the client wants."""
    rows: list[tuple[Any, ...]] = []
    payload: list[Frame] = []
    names: list[bytes] = []
    lengths, routes = _encode_routes([item.route for item in items])
    for item, route_len in zip(items, lengths, strict=True):
        name = item.name.encode()[:MAX_NAME]
        names.append(name)
        rows.append(
            (
                item.task_id,
                item.key,
                item.fn_hash,
                item.kind,
                item.flags,
                item.window,
                item.keep,
                len(name),
                len(item.frames),
                route_len,
            )
        )
        payload.extend(item.frames)
    extra = b"".join(names) + routes
    return _encode_batch(MsgType.ENQUEUE, _ENQUEUE_ITEM, rows, payload, extra)


def decode_enqueue(body: bytes, payload: Sequence[Frame]) -> list[SubmitItem]:
    rows, extra = _decode_rows(body, _ENQUEUE_ITEM, "ENQUEUE")
    names_size = sum(row[7] for row in rows)
    if len(extra) < names_size:
        raise ProtocolError("ENQUEUE: the names section does not match the items")
    _check_frames("ENQUEUE", sum(row[8] for row in rows), payload)
    routes = _decode_routes(extra[names_size:], [row[9] for row in rows], "ENQUEUE")
    items, at, name_at = [], 0, 0
    for row, route in zip(rows, routes, strict=True):
        task_id, key, fn_hash, kind, flags, window, keep, name_len, n, _ = row
        if not keep >= 0:  # also refuses NaN
            raise ProtocolError("ENQUEUE: keep must be a number of seconds >= 0")
        try:
            name = extra[name_at : name_at + name_len].decode()
        except UnicodeDecodeError:
            raise ProtocolError("ENQUEUE: a function name is not UTF-8") from None
        name_at += name_len
        items.append(
            SubmitItem(
                task_id,
                fn_hash,
                kind,
                window,
                (),
                list(payload[at : at + n]),
                key,
                keep,
                name,
                flags,
                route,
            )
        )
        at += n
    return items


def encode_enqueued(client_task_ids: Sequence[int]) -> list[Frame]:
    """ENQUEUED: the router holds these background tasks (with --data: on disk)."""
    return _encode_ids(MsgType.ENQUEUED, client_task_ids)


def decode_enqueued(body: bytes, payload: Sequence[Frame]) -> list[int]:
    return _decode_ids(body, payload, "ENQUEUED")


def encode_query(request: int, query: dict[str, Any], frames: Sequence[Frame] = ()) -> list[Frame]:
    """QUERY: a JSON request, e.g. ``{"op": "info", "ids": [...]}``; ``frames`` follow it
    when the request carries opaque data (a schedule's function body and payload)."""
    header = _HEADERS[MsgType.QUERY] + _REQUEST.pack(request)
    return [header, json.dumps(query).encode(), *frames]


def encode_answer(request: int, answer: Any) -> list[Frame]:
    """ANSWER: the JSON answer to the QUERY numbered ``request``."""
    return [_HEADERS[MsgType.ANSWER] + _REQUEST.pack(request), json.dumps(answer).encode()]


def decode_query(body: bytes, payload: Sequence[Frame]) -> tuple[int, Any, list[Frame]]:
    """A QUERY: (request number, the JSON value, the opaque frames after it)."""
    (request,) = _fixed(body, _REQUEST, "QUERY")
    if not payload:
        raise ProtocolError("QUERY: expected a JSON frame")
    return request, _json_frame(payload[0], "QUERY"), list(payload[1:])


def decode_answer(body: bytes, payload: Sequence[Frame]) -> tuple[int, Any]:
    """An ANSWER: (request number, the JSON value)."""
    (request,) = _fixed(body, _REQUEST, "ANSWER")
    if len(payload) != 1:
        raise ProtocolError("ANSWER: expected one JSON frame")
    return request, _json_frame(payload[0], "ANSWER")


#: the kinds of events, by their code in EVENTS rows (never renumber; add at the end)
EVENT_TYPES = (
    "task.submitted",
    "task.started",
    "task.succeeded",
    "task.failed",
    "task.cancelled",
    "task.expired",
    "task.retried",
    "task.redelivered",
    "worker.joined",
    "worker.lost",
    "worker.drained",
    "events.lost",
)
EVENT_CODES = {kind: code for code, kind in enumerate(EVENT_TYPES)}
#: the first worker event's code: codes below are task events
_WORKER_EVENTS = EVENT_CODES["worker.joined"]
_EVENTS_LOST = EVENT_CODES["events.lost"]

#: what the router queues for an event, until one EVENTS message carries a batch of them:
#: a task event ``(code, t, id, name, queue, attempt, worker, runtime, error type, error
#: message, failed attempt)`` (id: the router's number, or a background task's id as text,
#: or a list of ids for a batch of tasks alike in all else; runtime None when it did not
#: run), a worker event ``(code, t, pid, host, queues, capacity)``, or ``(code, t, count)``
#: for events a slow subscriber lost
EventEntry = tuple[Any, ...]


def encode_events(entries: Sequence[EventEntry]) -> list[Frame]:
    """EVENTS: a batch of events, oldest first, in one compact JSON frame (docs/protocol.md,
    "Events"): strings once in a table, times in integer microseconds, and consecutive task
    events that differ only in task, time and run time folded into one row. Sent only to
    clients that subscribed; a burst of 1,000 tasks is a few rows, not 1,000 objects."""
    strings: dict[str, int] = {"": 0}

    def ref(text: str) -> int:
        index = strings.get(text)
        if index is None:
            index = strings[text] = len(strings)
        return index

    rows: list[list[Any]] = []
    last: tuple[Any, ...] | None = None
    row: list[Any] = []
    for entry in entries:
        code = entry[0]
        t_us = round(entry[1] * 1e6)
        if code >= _WORKER_EVENTS:
            last = None
            if code == _EVENTS_LOST:
                rows.append([code, t_us, entry[2]])
            else:
                _, _, pid, host, queues, capacity = entry
                rows.append([code, t_us, pid, ref(host), [ref(q) for q in queues], capacity])
            continue
        _, _, task_id, name, queue, attempt, worker, runtime, error_type, message, failed = entry
        group = (code, name, queue, attempt, worker, error_type, message, failed)
        if group != last:
            last = group
            row = [code, ref(name), ref(queue), attempt, worker, ref(error_type)]
            row += [ref(message), failed, [], [], None]
            rows.append(row)
        if isinstance(task_id, list):  # a batch's tasks at once (never with a run time)
            row[8].extend(task_id)
            row[9].extend([t_us] * len(task_id))
            if row[10] is not None:
                row[10].extend([None] * len(task_id))
            continue
        row[8].append(task_id)
        row[9].append(t_us)
        if runtime is not None:
            if row[10] is None:
                row[10] = [None] * (len(row[8]) - 1)
            row[10].append(round(runtime * 1e6))
        elif row[10] is not None:
            row[10].append(None)
    table = sorted(strings, key=strings.__getitem__)
    body = json.dumps({"strings": table, "rows": rows}, separators=(",", ":")).encode()
    return [_HEADERS[MsgType.EVENTS], body]


def decode_events(body: bytes, payload: Sequence[Frame]) -> tuple[list[str], list[Any]]:
    """An EVENTS message's string table and rows (:func:`expand_events` makes the events)."""
    if body or len(payload) != 1:
        raise ProtocolError("EVENTS: expected one JSON frame")
    batch = _json_frame(payload[0], "EVENTS")
    if not isinstance(batch, dict):
        raise ProtocolError("EVENTS: not a JSON object")
    strings, rows = batch.get("strings"), batch.get("rows")
    if not isinstance(strings, list) or not isinstance(rows, list):
        raise ProtocolError('EVENTS: expected "strings" and "rows" lists')
    return strings, rows


def expand_events(strings: Sequence[str], rows: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """The events of one EVENTS message, as dicts, in order (see docs/protocol.md).

    Raises:
        ProtocolError: a row that does not read (the events before it were given).
    """
    try:
        for row in rows:
            code = row[0]
            kind = EVENT_TYPES[code]
            if code == _EVENTS_LOST:
                yield {"type": kind, "t": row[1] / 1e6, "count": row[2]}
            elif code >= _WORKER_EVENTS:
                _, t_us, pid, host, queues, capacity = row
                yield {
                    "type": kind,
                    "t": t_us / 1e6,
                    "worker": pid,
                    "host": strings[host],
                    "queues": [strings[q] for q in queues],
                    "capacity": capacity,
                }
            else:
                _, name, queue, attempt, worker, error_type, message, failed = row[:8]
                ids, times, runtimes = row[8], row[9], row[10]
                name, queue = strings[name], strings[queue]
                error = strings[error_type]
                for i, task_id in enumerate(ids):
                    event = {
                        "type": kind,
                        "t": times[i] / 1e6,
                        "id": task_id if isinstance(task_id, str) else f"{task_id:016x}",
                        "name": name,
                        "queue": queue,
                        "attempt": attempt,
                    }
                    if worker:
                        event["worker"] = worker
                    if runtimes is not None and runtimes[i] is not None:
                        event["runtime"] = runtimes[i] / 1e6
                    if error:
                        event["error_type"], event["error_message"] = error, strings[message]
                    if failed:
                        event["failed_attempt"] = failed
                    yield event
    except (IndexError, TypeError, ValueError, KeyError) as exc:
        raise ProtocolError(f"EVENTS: a row does not read: {exc!r}"[:200]) from None


def _json_frame(frame: Frame, what: str) -> Any:
    try:
        return json.loads(bytes(frame))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what}: bad JSON: {exc}"[:200]) from None
