"""What :class:`~squall.router.state.RouterState` tells the socket loop to do: typed sends.

The state decides; ``router.server`` encodes each instruction with ``squall.protocol`` and
sends it (or, for :class:`CutOff`, stops serving the peer). The list ``take_sends()`` returns is
already in the order it must go out (replies in arrival order, then cancels, tasks, stream
items, results, STARTED and acks), so the server decides nothing but socket-level matters:
full pipes, backlogs, unreachable peers.

They are NamedTuples: one small tuple per message sent, never one per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from squall.protocol import ErrorCode, StreamItem

if TYPE_CHECKING:
    from squall.router.model import Task


class SendTasks(NamedTuple):
    """TASK batches to a worker (the server chunks and encodes them)."""

    worker: bytes
    tasks: list[Task]


class SendResults(NamedTuple):
    """RESULT batches to a client: (client task id, status, outcome frames)."""

    client: bytes
    outcomes: list[tuple[int, int, list[Any]]]


class SendItems(NamedTuple):
    """ITEM batches to a client, task ids already the client's own."""

    client: bytes
    items: list[StreamItem]


class SendAcks(NamedTuple):
    """ACK batches to a worker: (router task id, items consumed)."""

    worker: bytes
    acks: list[tuple[int, int]]


class SendStarted(NamedTuple):
    """STARTED to a client: its task ids now on a worker."""

    client: bytes
    task_ids: list[int]


class SendCancel(NamedTuple):
    """CANCEL to a worker: router task ids it must stop (or drop unstarted)."""

    worker: bytes
    task_ids: list[int]


class SendError(NamedTuple):
    """ERROR to a peer (never CUT_OFF: that is :class:`CutOff`)."""

    peer: bytes
    code: ErrorCode
    text: str


class SendWelcome(NamedTuple):
    """WELCOME after a HELLO (the server adds its heartbeat interval and epoch)."""

    peer: bytes
    workers: int
    resumed: bool


class SendBody(NamedTuple):
    """FN_BODY to a worker; an empty body says nobody has it."""

    peer: bytes
    fn_hash: bytes
    body: bytes


class SendFetch(NamedTuple):
    """FN_FETCH to the client that can upload a body a worker misses."""

    peer: bytes
    fn_hash: bytes


class SendWithdrawn(NamedTuple):
    """WITHDRAW answers to a client: (client task id, dropped before any worker had it)."""

    client: bytes
    answers: list[tuple[int, bool]]


class SendEnqueued(NamedTuple):
    """ENQUEUED to a client: the router holds these background tasks (client task ids). The
    server sends it only after the store committed them."""

    client: bytes
    task_ids: list[int]


class SendAnswer(NamedTuple):
    """ANSWER to a client's QUERY: its request number and the JSON value."""

    peer: bytes
    request: int
    answer: Any


class SendStats(NamedTuple):
    """STATS to a client: the counters (the server adds its own socket-level figures)."""

    peer: bytes
    stats: dict[str, Any]


class SendEvents(NamedTuple):
    """EVENTS to each of these subscribed clients: one batch (``protocol.EventEntry``
    tuples), encoded once."""

    peers: list[bytes]
    events: list[tuple[Any, ...]]


class SendHeartbeats(NamedTuple):
    """HEARTBEAT to each of these peers."""

    peers: list[bytes]


class CutOff(NamedTuple):
    """Stop serving ``peer``: its state is already gone; drop its messages unread from now on
    and tell it why (ERROR CUT_OFF, best effort)."""

    peer: bytes
    reason: str


class Log(NamedTuple):
    """A line for the operator's log (``level`` is a structlog method name)."""

    level: str
    event: str
    fields: dict[str, Any]


class TaskFailed(NamedTuple):
    """A worker reported a task failed: the server's rate-limited failure log notes it."""

    task_id: int
    fn_hash: bytes
    frames: list[Any]


Send = (
    SendTasks
    | SendResults
    | SendItems
    | SendAcks
    | SendStarted
    | SendCancel
    | SendError
    | SendWelcome
    | SendBody
    | SendFetch
    | SendWithdrawn
    | SendEnqueued
    | SendAnswer
    | SendStats
    | SendEvents
    | SendHeartbeats
    | CutOff
    | Log
    | TaskFailed
)
