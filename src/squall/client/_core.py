"""The client's I/O-free core: the pending-task table, message building, outcome delivery.

Any number of caller threads add tasks; one I/O driver takes what is queued as whole SUBMIT
batches and hands RESULT batches back. The core never touches a socket, so the threaded driver
(and later ones: asyncio, gevent) stay thin. Pickling happens in the caller's thread, before the
lock, so a bad argument fails at ``submit`` and the lock is held only for list appends.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterable
from concurrent.futures import InvalidStateError
from typing import Any

from squall import protocol, serialization
from squall.client.future import Future
from squall.errors import SerializationError
from squall.protocol import Frame, Kind, ResultItem, Status

#: Items per SUBMIT message.
MAX_ITEMS = 1000
#: Function bodies kept after their last task ended, for the router to fetch again.
RECENT_BODIES = 1024


class ClientCore:
    """Tasks waiting for an outcome, and the messages still to send for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        #: task id -> (future, fn hash, body): the body stays reachable while a task needs it
        self.pending: dict[int, tuple[Future[Any], bytes, bytes]] = {}
        self._announced: set[bytes] = set()
        self._recent: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._outbox: list[tuple[int, bytes, int, list[Frame]]] = []
        self._new_bodies: list[tuple[bytes, bytes]] = []
        self._wake_pending = False
        #: function bodies sent to the router: each distinct function goes once
        self.bodies_sent = 0

    def add(
        self, fn_hash: bytes, body: bytes, calls: Iterable[tuple[list[Frame], Future[Any]]]
    ) -> bool:
        """Queue calls of one function; return True when the driver must be woken to send."""
        with self._lock:
            if fn_hash not in self._announced:
                self._announced.add(fn_hash)
                self._new_bodies.append((fn_hash, body))
            for frames, future in calls:
                task_id = next(self._ids)
                future.task_id = task_id
                self.pending[task_id] = (future, fn_hash, body)
                self._outbox.append((task_id, fn_hash, Kind.CALL, frames))
            wake = not self._wake_pending
            self._wake_pending = True
        return wake

    def take_outgoing(self) -> list[list[Frame]]:
        """Everything queued since the last call, as messages: new function bodies first."""
        with self._lock:
            outbox, self._outbox = self._outbox, []
            bodies, self._new_bodies = self._new_bodies, []
            self._wake_pending = False
        messages = [protocol.encode_fn_body(h, b) for h, b in bodies]
        self.bodies_sent += len(bodies)
        for start in range(0, len(outbox), MAX_ITEMS):
            messages.append(protocol.encode_submit(outbox[start : start + MAX_ITEMS]))
        return messages

    def deliver(self, items: list[ResultItem]) -> None:
        """Resolve the futures of a RESULT batch (outside the lock: callbacks run user code)."""
        with self._lock:
            entries = [(self.pending.pop(item.task_id, None), item) for item in items]
            for entry, _ in entries:
                if entry is not None:
                    self._remember(entry[1], entry[2])
        for entry, item in entries:
            if entry is None:
                continue  # not ours any more (e.g. cancelled and forgotten)
            future = entry[0]
            try:
                if item.status == Status.OK:
                    try:
                        value = serialization.loads(item.frames)
                    except Exception as exc:
                        future.set_exception(
                            SerializationError(f"the result could not be unpickled: {exc!r}")
                        )
                    else:
                        future.set_result(value)
                else:
                    future.set_exception(serialization.loads_exception(item.frames))
            except InvalidStateError:
                pass  # cancelled by the caller meanwhile

    def _remember(self, fn_hash: bytes, body: bytes) -> None:
        self._recent[fn_hash] = body
        self._recent.move_to_end(fn_hash)
        if len(self._recent) > RECENT_BODIES:
            self._recent.popitem(last=False)

    def body(self, fn_hash: bytes) -> bytes:
        """The body the router asks for again (its cache dropped it); empty if gone here too."""
        with self._lock:
            if fn_hash in self._recent:
                return self._recent[fn_hash]
            for _, h, body in self.pending.values():
                if h == fn_hash:
                    return body
        return b""

    def forget_announced(self) -> None:
        """The router lost its state (restart): bodies must be sent again on next use."""
        with self._lock:
            self._announced.clear()

    def futures(self) -> list[Future[Any]]:
        with self._lock:
            return [entry[0] for entry in self.pending.values()]

    def fail_all(self, exc: BaseException) -> None:
        """Resolve every pending future with ``exc`` (the client is closing)."""
        with self._lock:
            entries, self.pending = list(self.pending.values()), {}
        for future, _, _ in entries:
            try:
                future.set_exception(exc)
            except InvalidStateError:
                pass
