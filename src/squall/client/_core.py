"""The client's I/O-free core: the pending-task table, message building, outcome delivery.

Any number of caller threads add tasks; one I/O driver takes what is queued as whole SUBMIT
batches and hands RESULT batches back. The core never touches a socket, so the threaded driver
(and later ones: asyncio, gevent) stay thin. Pickling happens in the caller's thread, before the
lock, so a bad argument fails at ``submit`` and the lock is held only for list appends.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import weakref
from collections.abc import Iterable
from typing import Any, NamedTuple

from squall import protocol
from squall.errors import SerializationError, WorkerLost
from squall.protocol import Frame, Kind, ResultItem, StreamItem

#: Items per SUBMIT message.
MAX_ITEMS = 1000
#: Function bodies kept after their last task ended, for the router to fetch again.
RECENT_BODIES = 1024
#: Seconds ``Future.cancel()`` waits for the router to say whether it dropped the task; past
#: them the answer is False (the task may run), and a late "dropped" still cancels the future.
WITHDRAW_TIMEOUT = 10.0


class Call(NamedTuple):
    """One task to send: its pickled arguments, who receives its outcome, and how it runs."""

    frames: list[Frame]
    target: Any  # a Future or a Stream: has _squall_outcome (and _squall_item for streams)
    kind: int = Kind.CALL
    window: int = 0
    deps: tuple[int, ...] = ()


class Withdrawal:
    """One WITHDRAW request: answered once the router has answered for each task it names."""

    __slots__ = ("task_ids", "left", "answered")

    def __init__(self, task_ids: list[int]) -> None:
        self.task_ids = task_ids
        self.left = len(task_ids)
        self.answered = threading.Event()


class ClientCore:
    """Tasks waiting for an outcome, and the messages still to send for them."""

    def __init__(self, max_pending: int = 1_000_000) -> None:
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self.max_pending = max_pending
        #: the I/O thread must never wait for room: only it can make room
        self.io_thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        #: task id -> (target, fn hash, body, submitted item): each payload is kept until its
        #: outcome arrives, so a restarted router can be given the task again
        self.pending: dict[int, tuple[Any, bytes, bytes, protocol.SubmitItem]] = {}
        self._announced: set[bytes] = set()
        self._recent: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._outbox: list[protocol.SubmitItem] = []
        self._new_bodies: list[tuple[bytes, bytes]] = []
        #: messages naming tasks (WITHDRAW, CANCEL): they go out after the SUBMITs queued
        #: before them, in the same hand-over, so that the router knows every task they name
        self._after: list[list[Frame]] = []
        self._wake_pending = False
        #: task id -> the WITHDRAW requests naming it, oldest first: the router answers each
        #: request, in order
        self._withdrawals: dict[int, collections.deque[Withdrawal]] = {}
        #: function bodies sent to the router: each distinct function goes once
        self.bodies_sent = 0

    def add(self, fn_hash: bytes, body: bytes, calls: Iterable[Call]) -> bool:
        """Queue calls of one function; return True when the driver must be woken to send.

        Waits while ``max_pending`` tasks are without an outcome: a client submitting far
        faster than the workers consume is slowed here rather than filling memory.
        """
        with self._lock:
            if threading.current_thread() is not self.io_thread:
                while len(self.pending) >= self.max_pending:
                    self._room.wait()
            if fn_hash not in self._announced:
                self._announced.add(fn_hash)
                self._new_bodies.append((fn_hash, body))
            for call in calls:
                task_id = next(self._ids)
                call.target.task_id = task_id
                # A stream is held weakly: when the reader drops it, it is collected and its
                # __del__ closes the remote generator.
                target = weakref.ref(call.target) if call.kind == Kind.STREAM else call.target
                item = protocol.SubmitItem(
                    task_id, fn_hash, call.kind, call.window, call.deps, call.frames
                )
                self.pending[task_id] = (target, fn_hash, body, item)
                self._outbox.append(item)
            wake = not self._wake_pending
            self._wake_pending = True
        return wake

    def add_after(self, frames: list[Frame]) -> bool:
        """Queue a message that names tasks; return True when the driver must be woken.

        It goes out after every SUBMIT queued before it. (The driver's own ``send()`` queue is
        drained after the submits it took, but a task queued between the two would follow
        its WITHDRAW, which the router would then answer as unknown.)
        """
        with self._lock:
            self._after.append(frames)
            wake = not self._wake_pending
            self._wake_pending = True
        return wake

    def take_outgoing(self) -> list[list[Frame]]:
        """Everything queued since the last call, as messages: new function bodies first,
        then the SUBMITs, then the messages naming tasks."""
        with self._lock:
            outbox, self._outbox = self._outbox, []
            bodies, self._new_bodies = self._new_bodies, []
            after, self._after = self._after, []
            self._wake_pending = False
        messages = [protocol.encode_fn_body(h, b) for h, b in bodies]
        self.bodies_sent += len(bodies)
        for start in range(0, len(outbox), MAX_ITEMS):
            messages.append(protocol.encode_submit(outbox[start : start + MAX_ITEMS]))
        messages += after
        return messages

    def deliver(self, items: list[ResultItem]) -> None:
        """Resolve the futures (or end the streams) of a RESULT batch.

        Outside the lock: resolving runs the caller's done-callbacks. Nothing is unpickled
        here (this is the I/O thread): targets keep the frames until their caller asks.
        """
        with self._lock:
            entries = [(self.pending.pop(item.task_id, None), item) for item in items]
            for entry, _ in entries:
                if entry is not None:
                    self._remember(entry[1], entry[2])
            self._room.notify_all()
        for entry, item in entries:
            target = _live(entry)
            if target is None:  # not ours any more (cancelled, or a dropped stream)
                continue
            try:
                target._squall_outcome(item.status, item.frames)
            except Exception as exc:  # one target's failure must not cost the rest of the batch
                target._squall_fail(SerializationError(f"the outcome could not be filed: {exc!r}"))

    def deliver_items(self, items: list[StreamItem]) -> None:
        """Hand streamed values to their streams."""
        for item in items:
            target = _live(self.pending.get(item.task_id))
            if target is not None:
                target._squall_item(item)

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
            for _, h, body, _ in self.pending.values():
                if h == fn_hash:
                    return body
        return b""

    def forget(self, task_id: int) -> None:
        """Stop tracking a task whose outcome nobody wants any more (cancelled)."""
        with self._lock:
            self.pending.pop(task_id, None)
            self._room.notify_all()

    def started(self, task_ids: list[int]) -> None:
        """The router handed these tasks to workers: their futures are running now (and
        ``cancel()`` returns False, as concurrent.futures says of running work).

        A task the router hands out again (its worker died) is announced again; its future is
        running already and stays so.
        """
        for task_id in task_ids:
            target = _live(self.pending.get(task_id))
            started = getattr(target, "_squall_started", None)
            if started is not None:  # streams have no running state
                started()

    # -- withdrawing: cancel() asks the router, which alone knows whether a worker has it ---

    def withdraw(self, futures: Iterable[Any]) -> tuple[Withdrawal | None, bool]:
        """Queue one WITHDRAW for those of ``futures`` still pending here (after their
        SUBMITs, see :meth:`add_after`) and register the request its answer resolves.

        Returns the request (to :meth:`wait_for`, if the caller may block), None when no
        future needs asking (running, done or unknown ones cannot be withdrawn, and say so
        without a round trip); and whether the driver must be woken.
        """
        with self._lock:
            task_ids = [
                f.task_id
                for f in futures
                if f.task_id in self.pending and not f.running() and not f.done()
            ]
            if not task_ids:
                return None, False
            request = Withdrawal(task_ids)
            for task_id in task_ids:
                self._withdrawals.setdefault(task_id, collections.deque()).append(request)
            self._after.append(protocol.encode_withdraw([(t, False) for t in task_ids]))
            wake = not self._wake_pending
            self._wake_pending = True
        return request, wake

    def wait_for(self, request: Withdrawal, timeout: float = WITHDRAW_TIMEOUT) -> bool:
        """Wait for the router's answer to ``request``; False if it did not come in time.

        A request given up on is forgotten, so that its late answer wakes no later caller
        early; a late "dropped" still cancels its future (see :meth:`withdrawn`).
        """
        if request.answered.wait(timeout):
            return True
        self._abandon(request)
        return request.answered.is_set()

    def _abandon(self, request: Withdrawal) -> None:
        """Expect no answer to ``request`` any more (given up on, or never sent)."""
        with self._lock:
            for task_id in request.task_ids:
                queue = self._withdrawals.get(task_id)
                if queue is not None and request in queue:
                    queue.remove(request)
                    if not queue:
                        del self._withdrawals[task_id]

    def withdrawn(self, answers: list[tuple[int, bool]]) -> None:
        """The router's answer to a WITHDRAW (called by the I/O driver with its pairs).

        A task it dropped never ran and never will: its future is cancelled here, in the I/O
        thread (whose callbacks run here too, as for a result), and only then is the caller
        woken, so that it finds the future in its final state.
        """
        dropped, answered = [], []
        with self._lock:
            for task_id, withdrawn in answers:
                queue = self._withdrawals.get(task_id)
                if queue:
                    request = queue.popleft()
                    if not queue:
                        del self._withdrawals[task_id]
                    request.left -= 1
                    if request.left == 0:
                        answered.append(request)
                if withdrawn and task_id in self.pending:
                    dropped.append(self.pending.pop(task_id))
            if dropped:
                self._room.notify_all()
        for entry in dropped:
            cancel = getattr(_live(entry), "_squall_withdrawn", None)
            if cancel is not None:
                cancel()
        for request in answered:
            request.answered.set()

    def _answer_all_withdrawals(self) -> None:
        """Wake every caller waiting for a WITHDRAW answer that will not come (the router
        restarted, or the client is closing): they find their futures not cancelled."""
        with self._lock:
            queues, self._withdrawals = self._withdrawals, {}
        for queue in queues.values():
            for request in queue:
                request.answered.set()

    def caller_may_wait(self) -> bool:
        """Whether the calling thread may block for the router's answer: not the I/O thread
        (only it can read the answer), nor one running an asyncio loop (it would stall)."""
        if threading.current_thread() is self.io_thread:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return True
        return False

    def resubmit_all(self) -> int:
        """The router lost its state (it restarted): queue every pending task again.

        A stream that already delivered values fails instead: running it again would repeat
        them. Returns how many tasks were queued again.
        """
        with self._lock:
            self._announced.clear()
            self._outbox.clear()
            self._new_bodies.clear()
            again, broken = [], []
            for task_id in sorted(self.pending):
                target, fn_hash, body, item = self.pending[task_id]
                live = _live((target, fn_hash, body, item))
                if getattr(live, "received", 0):
                    broken.append(live)
                    del self.pending[task_id]
                    continue
                if fn_hash not in self._announced:
                    self._announced.add(fn_hash)
                    self._new_bodies.append((fn_hash, body))
                again.append(item)
            self._outbox.extend(again)
            self._room.notify_all()
        self._answer_all_withdrawals()  # asked of the router that is gone
        for stream in broken:
            stream._squall_fail(WorkerLost("the router restarted while the stream was running"))
        return len(again)

    def targets(self) -> list[Any]:
        with self._lock:
            entries = list(self.pending.values())
        return [t for t in map(_live, entries) if t is not None]

    def fail_all(self, exc: BaseException) -> None:
        """End every pending task with ``exc`` (the client is closing)."""
        with self._lock:
            entries, self.pending = list(self.pending.values()), {}
        for target in map(_live, entries):
            if target is not None:
                target._squall_fail(exc)
        with self._lock:
            self._room.notify_all()
        self._answer_all_withdrawals()


def _live(entry: tuple[Any, ...] | None) -> Any:
    """The future or stream of a pending entry; None if there is none (any more)."""
    if entry is None:
        return None
    target = entry[0]
    return target() if type(target) is weakref.ref else target
