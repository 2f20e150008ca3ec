"""What the router's core keeps per task, worker and client, its limits, and the body cache.

Plain data with no decisions in it, shared by the core's three layers, which decide:
:mod:`squall.router.state`, :mod:`squall.router.peers` and :mod:`squall.router.scheduler`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from squall.protocol import DEFAULT_QUEUE, function_hash


@dataclass(slots=True, eq=False)  # compared by identity, never field by field
class Task:
    """One accepted task, from submit until its outcome reaches the client."""

    id: int
    client: bytes
    client_task_id: int
    fn_hash: bytes
    kind: int
    frames: list[Any]
    attempt: int = 0
    worker: bytes | None = None
    window: int = 0
    #: outcomes (status, frames) of the tasks this one takes as arguments, in argument order
    deps: list[tuple[int, list[Any]] | None] | None = None
    waiting: int = 0  # dependencies without an outcome yet; queued only at 0
    dependents: list[tuple[Task, int]] | None = None  # None, not [], keeps submit cheap
    cancelled: bool = False
    items_sent: int = 0  # stream items already forwarded: such a task cannot simply run again
    #: how often a worker died while running this task; from ISOLATE_AFTER on, it runs alone
    deaths: int = 0
    #: bytes of its argument frames, held until its outcome: counted against the byte limits
    size: int = 0
    #: the worker group its client restricted it to; "" for any worker
    group: str = ""
    #: waiting in ``RouterState.suspects`` (to run alone), not in a queue
    suspect: bool = False
    #: a background task's id (``squall.ids``): kept by the router, owned by no client
    key: bytes = b""
    #: background tasks: the clients waiting for its outcome, as (client, client task id)
    watchers: list[tuple[bytes, int]] | None = None
    #: the named queue it waits in, and its priority there (higher first)
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    #: Unix time before which it is held (a delayed task); 0: at once
    not_before: float = 0.0
    #: Unix time past which, never started, it fails with TaskExpired; 0: never
    expires: float = 0.0
    #: held in the timers until ``not_before``, not in a queue
    held: bool = False
    #: a call by name: the function it calls (only workers serving it, or the router's
    #: published body, can run it); "" for a call of a function body
    function: str = ""
    #: wall-clock times it came in and last went to a worker (0: not yet), for the history
    submitted_at: float = 0.0
    started_at: float = 0.0
    #: attempts its worker made again after a failure (its ``retries`` option), so far
    retries: int = 0


@dataclass(slots=True)
class Worker:
    peer: bytes
    pid: int
    capacity: int
    last_seen: float
    running: dict[int, Task] = field(default_factory=dict)
    #: a suspect task running alone here: nothing else is sent until it ends
    isolating: int | None = None
    #: the group of its key (a subfolder of the auth directory's workers/), "" for none
    group: str = ""
    #: its watchdog reports the hub blocked (a task that does not yield): nothing new goes there
    blocked: bool = False
    #: the named queues it serves (``squall worker --queues``)
    queues: frozenset[str] = frozenset((DEFAULT_QUEUE,))
    #: the functions it serves by name (``squall worker --import``)
    functions: frozenset[str] = frozenset()
    #: for people: the host it runs on, its resident memory (bytes, 0: not said), tasks it
    #: finished, when it joined (monotonic)
    host: str = ""
    rss: int = 0
    done: int = 0
    joined: float = 0.0
    #: an operator drained it (``drain`` op): it finishes what it runs and gets nothing new
    draining: bool = False

    @property
    def free(self) -> int:
        if self.isolating is not None or self.blocked or self.draining:
            return 0
        return self.capacity - len(self.running)


@dataclass(frozen=True, slots=True)
class Published:
    """A function published to the router by value (``ex.publish``): the cloudpickled body
    of its current version, never unpickled here, sent to workers by hash like any body."""

    name: str
    version: int
    fn_hash: bytes
    body: bytes
    published_at: float


@dataclass(slots=True)
class Client:
    peer: bytes
    pid: int
    last_seen: float
    #: who uploaded its function bodies: its key with authentication, else the peer itself
    scope: str = ""
    #: only workers of this group may run its tasks; "" for any listed worker
    group: str = ""


def frames_size(frames: Iterable[Any]) -> int:
    """Bytes in payload frames (bytes, ``zmq.Frame`` or buffers alike)."""
    return sum(map(len, frames))  # no generator: this runs for every task and outcome


@dataclass(frozen=True)
class Limits:
    """What the router may hold, in bytes and counts, so that no peer can exhaust its memory.

    Args:
        max_queued: tasks one client may have in the router.
        client_bytes: argument bytes one client's tasks may hold in the router (queued,
            running, waiting for dependencies).
        held_bytes: argument bytes all clients' tasks together may hold.
        recent_bytes: bytes of finished outcomes kept for dependents submitted late.
        recent_count: how many such outcomes are kept.
        body_size: bytes one function body may have (refused, and its tasks failed, above).
        max_capacity: tasks one worker process may claim to run at once.
        uploads_per_scope: function hashes remembered per uploader (see ``uploaded``).
    """

    max_queued: int = 1_000_000
    client_bytes: int = 512 << 20
    held_bytes: int = 2 << 30
    recent_bytes: int = 64 << 20
    recent_count: int = 10_000
    body_size: int = 16 << 20
    max_capacity: int = 100_000
    uploads_per_scope: int = 65_536


class BodyCache:
    """Function bodies by hash, least recently used first out, bounded in count and bytes."""

    def __init__(self, max_items: int = 4096, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._bodies: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, fn_hash: bytes) -> bytes | None:
        body = self._bodies.get(fn_hash)
        if body is not None:
            self._bodies.move_to_end(fn_hash)
        return body

    def put(self, fn_hash: bytes, body: bytes) -> bool:
        """Keep ``body`` if it really hashes to ``fn_hash`` (and fits); return whether the hash
        was right.

        Checking the hash stops one client from planting a body under another's hash.
        """
        if function_hash(body) != fn_hash:
            return False
        if fn_hash in self._bodies or len(body) > self.max_bytes:
            return True
        self._bodies[fn_hash] = body
        self._bytes += len(body)
        while len(self._bodies) > self.max_items or self._bytes > self.max_bytes:
            _, old = self._bodies.popitem(last=False)
            self._bytes -= len(old)
        return True
