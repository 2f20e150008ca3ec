"""The client's I/O-free core: the task table, the connection's state machine, message building.

Drivers own a socket and a clock and nothing else. They hand the core what happened, each call
returning a :class:`Step` of instructions:

- :meth:`ClientCore.open`: the session starts (the HELLO to send);
- :meth:`ClientCore.receive`: a message arrived from the router;
- :meth:`ClientCore.tick`: time passed (liveness: HEARTBEAT, or HELLO again to a silent router);
- :meth:`ClientCore.handshake_failed`: libzmq refused the CURVE handshake;

and the driver sends ``step.send`` and calls ``step.deliver()`` (outside the core's lock: it
runs the callers' done-callbacks). Tasks go the other way: any number of caller threads
:meth:`~ClientCore.add` them, and the driver, woken once per burst, sends what
:meth:`~ClientCore.take_outgoing` gives as whole SUBMIT batches. The state machine (HELLO and
WELCOME, liveness, reconnect and resubmit, error replies, stats and withdraw answers, function
bodies asked for again) lives here, so the threaded driver (``sync.py``, also the gevent one
over ``zmq.green``) and the asyncio one (``asyncio_driver.py``) only poll and send, and this is
tested without sockets (tests/test_client_core.py, with a fake clock).

Pickling happens in the caller's thread, before the lock, so a bad argument fails at ``submit``
and the lock is held only for list appends.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from squall import protocol
from squall.config import BEATS_PER_LIVENESS, ROUTER_SILENCE_BEATS
from squall.errors import ProtocolError, Refused, SerializationError, SquallError, WorkerLost
from squall.log import get_logger
from squall.protocol import ErrorCode, Frame, Kind, MsgType, ResultItem, Role, StreamItem
from squall.serialization import function_label

log = get_logger(__name__)

#: Function bodies kept after their last task ended, for the router to fetch again.
RECENT_BODIES = 1024
#: Seconds ``Future.cancel()`` waits for the router to say whether it dropped the task; past
#: them the answer is False (the task may run), and a late "dropped" still cancels the future.
WITHDRAW_TIMEOUT = 10.0
#: Seconds of silence before the first WELCOME tells the router's own interval (five of them).
DEFAULT_LIVENESS = 5.0


class Receiver(Protocol):
    """What a task's outcome is handed to: a :class:`~squall.Future` or a
    :class:`~squall.Stream`. The driver calls these in its own thread; none may unpickle."""

    task_id: int

    def _squall_outcome(self, status: int, frames: list[Frame]) -> None:
        """The task's RESULT: its status and frames, kept as they are."""

    def _squall_item(self, item: StreamItem) -> None:
        """Values the task streamed (streams only)."""

    def _squall_started(self) -> None:
        """A worker has the task."""

    def _squall_withdrawn(self) -> None:
        """The router dropped the task before any worker had it."""

    def _squall_fail(self, exc: BaseException) -> None:
        """The task ends with ``exc``, raised on this side."""

    def _squall_rerunnable(self) -> bool:
        """Whether the task may run again from the start (the router lost it)."""

    def _squall_held(self) -> None:
        """The router holds the task (a background task: committed, with --data)."""


#: a reader of router events: called in the I/O thread with each batch (must not block)
EventSink = Callable[[list[dict[str, Any]]], None]


class StatsWaiter(Protocol):
    """A future waiting for the router's counters (concurrent.futures or asyncio)."""

    def cancelled(self) -> bool: ...

    def set_result(self, result: dict[str, Any], /) -> None: ...


class Driver(Protocol):
    """What an executor needs of its I/O driver (sync.ThreadDriver, asyncio_driver's)."""

    def wake(self) -> None:
        """Send what the core has queued (from any thread)."""

    def send(self, frames: list[Frame]) -> None:
        """Queue a message and send it (from any thread)."""

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """The router's counters, waited for here."""
        ...

    def silent_for(self) -> float:
        """Seconds the router has been silent (0 while it answers)."""
        ...

    def close(self) -> None:
        """Say DISCONNECT and close the socket."""


class _Withdrawable(Protocol):
    task_id: int

    def running(self) -> bool: ...

    def done(self) -> bool: ...


class Call(NamedTuple):
    """One task to send: its pickled arguments, who receives its outcome, and how it runs."""

    frames: list[Frame]
    target: Receiver
    kind: int = Kind.CALL
    window: int = 0
    deps: tuple[int, ...] = ()
    #: a background task's id (``squall.ids``); empty for a task tied to this client
    key: bytes = b""
    keep: float = 0.0
    name: str = ""
    flags: int = 0  # protocol.EnqueueFlag
    #: queue, priority, delay and expiry (None: the default route)
    route: protocol.Route | None = None


class Pending:
    """A task without an outcome yet: who receives it, and its payload, kept until the outcome
    arrives so that a restarted router can be given the task again.

    A stream is held weakly: when its reader drops it, it is collected and its ``__del__``
    closes the remote generator.
    """

    __slots__ = ("_target", "body", "item")

    def __init__(self, target: Receiver, body: bytes, item: protocol.SubmitItem) -> None:
        self._target: Any = weakref.ref(target) if item.kind == Kind.STREAM else target
        self.body = body
        self.item = item

    @property
    def fn_hash(self) -> bytes:
        return self.item.fn_hash

    def receiver(self) -> Receiver | None:
        """The future or stream; None for a stream nobody holds any more."""
        target = self._target
        return target() if type(target) is weakref.ref else target


class Withdrawal:
    """One WITHDRAW request: answered once the router has answered for each task it names."""

    __slots__ = ("task_ids", "left", "answered", "on_answer")

    def __init__(self, task_ids: list[int]) -> None:
        self.task_ids = task_ids
        self.left = len(task_ids)
        self.answered = threading.Event()
        #: called (in the driver's thread) once answered: how an asyncio caller awaits it
        self.on_answer: Any = None

    def answer(self) -> None:
        self.answered.set()
        if self.on_answer is not None:
            self.on_answer()


class Step:
    """What the driver does after an event: send ``send`` (in order), then :meth:`deliver`."""

    __slots__ = (
        "send",
        "results",
        "items",
        "started",
        "cancelled",
        "failed",
        "answered",
        "stats",
        "held",
        "events",
    )

    def __init__(self) -> None:
        self.send: list[list[Frame]] = []
        self.results: list[tuple[Receiver, ResultItem]] = []
        self.items: list[tuple[Receiver, StreamItem]] = []
        self.started: list[Receiver] = []
        self.cancelled: list[Receiver] = []
        self.failed: list[tuple[Receiver, BaseException]] = []
        self.answered: list[Withdrawal] = []
        self.stats: list[tuple[StatsWaiter, Any]] = []
        self.held: list[Receiver] = []
        #: batches of router events, each with the sinks (ex.events() readers) to hand it to
        self.events: list[tuple[list[EventSink], list[dict[str, Any]]]] = []

    def deliver(self) -> None:
        """Hand the outcomes to their futures and streams (runs their callers' callbacks)."""
        for target, exc in self.failed:
            target._squall_fail(exc)
        for target, result in self.results:
            try:
                target._squall_outcome(result.status, result.frames)
            except Exception as exc:  # one target's failure must not cost the rest of the batch
                target._squall_fail(SerializationError(f"the outcome could not be filed: {exc!r}"))
        for target, item in self.items:
            target._squall_item(item)
        for target in self.started:
            target._squall_started()
        for target in self.held:
            target._squall_held()
        for target in self.cancelled:  # before the answers: callers find them cancelled
            target._squall_withdrawn()
        for request in self.answered:
            request.answer()
        for waiter, stats in self.stats:
            if not waiter.cancelled():  # its caller gave up: this was its late reply
                try:
                    waiter.set_result(stats)
                except Exception:  # cancelled meanwhile, from another thread
                    pass
        for sinks, batch in self.events:
            for sink in sinks:
                sink(batch)


class ClientCore:
    """Tasks waiting for an outcome, the messages still to send for them, and the session."""

    def __init__(self, max_pending: int = 1_000_000) -> None:
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self.max_pending = max_pending
        #: the driver's thread: it must never wait for room (only it can make room), nor for
        #: an answer it alone can read
        self.io_thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self.pending: dict[int, Pending] = {}
        self._announced: set[bytes] = set()
        self._recent: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._outbox: list[protocol.SubmitItem] = []
        #: background tasks and attachments: they go as ENQUEUE, after the SUBMITs
        self._kept_outbox: list[protocol.SubmitItem] = []
        #: QUERY request number -> who waits for the answer
        self._queries: dict[int, StatsWaiter] = {}
        self._query_ids = itertools.count(1)
        self._new_bodies: list[tuple[bytes, bytes]] = []
        #: readers of router events (``ex.events()``), fed from the I/O thread
        self.event_sinks: list[EventSink] = []
        #: messages naming tasks (WITHDRAW, CANCEL): they go out after the SUBMITs queued
        #: before them, in the same hand-over, so that the router knows every task they name
        self._after: list[list[Frame]] = []
        #: messages from any thread (ACK, CANCEL, STATS) that name no new task: appended
        #: without the lock, sent after the hand-over's SUBMITs
        self._control: collections.deque[list[Frame]] = collections.deque()
        self._wake_pending = False
        #: task id -> the WITHDRAW requests naming it, oldest first: the router answers each
        #: request, in order
        self._withdrawals: dict[int, collections.deque[Withdrawal]] = {}
        self._stats_waiters: collections.deque[StatsWaiter] = collections.deque()
        #: function bodies sent to the router: each distinct function goes once
        self.bodies_sent = 0
        # -- the session --
        self.address = ""
        self.key = "client"
        self._hello: list[Frame] = []
        #: a WELCOME came: the router serves us
        self.connected = False
        #: why the router will never serve us (refused, cut off, other version); None if it may
        self.error: SquallError | None = None
        #: the router fell silent (or said it restarts): HELLO until one answers
        self.lost = False
        self.liveness = DEFAULT_LIVENESS
        self._last_heard = 0.0
        self._last_hello = float("-inf")
        self._last_beat = float("-inf")

    # -- the session: events in, instructions out ------------------------------------------

    def open(
        self, address: str, now: float, pid: int, key: str = "client", group: str = ""
    ) -> Step:
        """The driver connected to ``address``: say HELLO."""
        self.address, self.key = address, key
        self._hello = protocol.encode_hello(Role.CLIENT, pid, group=group)
        self._last_heard = now
        step = Step()
        step.send.append(self._hello)
        return step

    @property
    def settled(self) -> bool:
        """Whether the start is decided: the router welcomed us, or will never serve us."""
        return self.connected or self.error is not None

    def silent_for(self, now: float) -> float:
        """Seconds since the router was last heard from (0 while it answers)."""
        return now - self._last_heard if self.lost else 0.0

    def tick(self, now: float) -> Step:
        """Time passed: notice a router gone silent (crashed, restarting) and keep saying HELLO
        until one answers (its WELCOME then gets every unfinished task again); otherwise
        heartbeat, since the router drops silent clients.

        Call it after reading what arrived: a driver that could not run for a while has not
        heard a router that was talking all along.
        """
        step = Step()
        if not self.lost and now - self._last_heard > self.liveness:
            self.lost = True
            log.warning(
                "router silent; reconnecting", router=self.address, pending=len(self.pending)
            )
        if self.lost and now - self._last_hello > self.liveness / BEATS_PER_LIVENESS:
            self._last_hello = now
            step.send.append(self._hello)
        elif self.connected and now - self._last_beat > self.liveness / BEATS_PER_LIVENESS:
            self._last_beat = now
            step.send.append(protocol.encode_heartbeat())
        return step

    def receive(self, frames: list[Frame], now: float) -> Step:
        """A message from the router.

        Raises:
            ProtocolError: it could not be read (log it and carry on: it was dropped).
        """
        self._last_heard = now
        type_, body = protocol.parse_header([bytes(frames[0])])
        payload = frames[1:]
        step = Step()
        if type_ is MsgType.RESULT:
            self._results(protocol.decode_result(body, payload), step)
        elif type_ is MsgType.ITEM:
            for item in protocol.decode_items(body, payload):
                target = _receiver(self.pending.get(item.task_id))
                if target is not None:
                    step.items.append((target, item))
        elif type_ is MsgType.STARTED:
            step.started = self._live(protocol.decode_started(body, payload))
        elif type_ is MsgType.FN_FETCH:
            fn_hash = protocol.decode_fn_fetch(body)
            step.send.append(protocol.encode_fn_body(fn_hash, self.body(fn_hash)))
        elif type_ is MsgType.STATS:
            stats = protocol.decode_stats(body)
            if self._stats_waiters:  # replies come in the order of the requests
                step.stats.append((self._stats_waiters.popleft(), stats))
        elif type_ is MsgType.WITHDRAW:
            self._withdrawn(protocol.decode_withdraw(body, payload), step)
        elif type_ is MsgType.ENQUEUED:
            step.held = self._live(protocol.decode_enqueued(body, payload))
        elif type_ is MsgType.ANSWER:
            request, answer = protocol.decode_answer(body, payload)
            waiter = self._queries.pop(request, None)
            if waiter is not None:
                step.stats.append((waiter, answer))
        elif type_ is MsgType.EVENTS:
            if self.event_sinks:
                events = list(protocol.expand_events(*protocol.decode_events(body, payload)))
                step.events.append((list(self.event_sinks), events))
        elif type_ is MsgType.WELCOME:
            self._welcome(protocol.decode_welcome(body), step)
        elif type_ is MsgType.ERROR:
            self._on_error(*protocol.decode_error(body), step)
        elif type_ is MsgType.DISCONNECT:
            log.warning("router is shutting down; will reconnect", router=self.address)
            self.lost = True
        return step

    def handshake_failed(self, refused_key: bool, status: object = None) -> Step:
        """libzmq says the security handshake failed: the router refused our key (ZAP, with
        ``status``), or it is not the router our ``router.key`` names. Nothing will ever get
        through, so every task fails at once instead of waiting for a timeout."""
        if refused_key:
            why = f"key {self.key!r} refused (ZAP status {status})"
        else:
            why = f"handshake with key {self.key!r} failed: wrong router.key, or not CURVE"
        log.error("router refused this client's key", router=self.address, key=self.key)
        return self._end(Refused(f"the router at {self.address} refused this key: {why}"))

    def goodbye(self) -> list[Frame]:
        """The last message of a session."""
        return protocol.encode_disconnect()

    def _welcome(self, welcome: protocol.Welcome, step: Step) -> None:
        # Five windows, not three: a router busy with a burst of a million tasks can be late
        # with a heartbeat without being gone.
        self.liveness = max(1.0, ROUTER_SILENCE_BEATS * welcome.heartbeat_interval)
        self.connected = True
        if not self.lost:
            return
        self.lost = False
        if welcome.resumed:
            # It was paused or busy, not restarted: it still holds every task of ours, and
            # submitting them again would run finished ones twice.
            log.warning("router back; it kept our tasks", router=self.address)
        else:
            again = self._resubmit_all(step)
            log.warning("router back; unfinished tasks submitted again", tasks=again)
            if self.event_sinks:  # a new router knows no subscription of ours
                self._resubscribe(step)

    def _on_error(self, code: int, reason: str, step: Step) -> None:
        log.warning("router refused a message", code=code, reason=reason)
        if code == ErrorCode.UNKNOWN_PEER:  # the router restarted: HELLO, then resubmit
            self.lost = True
            self._last_hello = float("-inf")
        elif code == ErrorCode.REFUSED and not self.settled:
            self.error = SquallError(f"router at {self.address} refused us: {reason}")
        elif code == ErrorCode.CUT_OFF:
            self._end(Refused(f"router at {self.address} cut this client off: {reason}"), step)
        elif code == ErrorCode.VERSION:
            self._end(ProtocolError(f"router at {self.address} refused us: {reason}"), step)

    def _end(self, error: SquallError, step: Step | None = None) -> Step:
        """The router will never serve us: every pending task fails with ``error``."""
        step = step if step is not None else Step()
        self.error = error
        step.failed += [(target, error) for target in self._take_all()]
        step.answered += self._take_withdrawals()
        return step

    # -- tasks in ---------------------------------------------------------------------------

    def add(self, fn_hash: bytes, body: bytes, calls: Iterable[Call]) -> bool:
        """Queue calls of one function; return True when the driver must be woken to send.

        Waits while ``max_pending`` tasks are without an outcome: a client submitting far
        faster than the workers consume is slowed here rather than filling memory. (Not in the
        driver's thread, which alone makes room: there, and so in an asyncio driver's event
        loop, it never waits.)
        """
        with self._lock:
            if threading.current_thread() is not self.io_thread:
                while len(self.pending) >= self.max_pending:
                    self._room.wait()
            if body and fn_hash not in self._announced:  # (an attachment has no body)
                self._announced.add(fn_hash)
                self._new_bodies.append((fn_hash, body))
            for call in calls:
                task_id = next(self._ids)
                call.target.task_id = task_id
                item = protocol.SubmitItem(
                    task_id,
                    fn_hash,
                    call.kind,
                    call.window,
                    call.deps,
                    call.frames,
                    call.key,
                    call.keep,
                    call.name,
                    call.flags,
                    call.route,
                )
                self.pending[task_id] = Pending(call.target, body, item)
                (self._kept_outbox if call.key else self._outbox).append(item)
            wake = not self._wake_pending
            self._wake_pending = True
        return wake

    def add_after(self, frames: list[Frame]) -> bool:
        """Queue a message that names tasks; return True when the driver must be woken.

        It goes out after every SUBMIT queued before it. (A message posted with :meth:`post`
        also goes after the SUBMITs taken with it, but a task queued between the two would
        follow its WITHDRAW, which the router would then answer as unknown.)
        """
        with self._lock:
            self._after.append(frames)
            wake = not self._wake_pending
            self._wake_pending = True
        return wake

    def post(self, frames: list[Frame]) -> None:
        """Queue a message from any thread, without the lock (an ACK, a CANCEL); the caller
        wakes the driver."""
        self._control.append(frames)

    def ask_stats(self, waiter: StatsWaiter) -> None:
        """Ask the router for its counters; ``waiter`` gets them. The caller wakes the driver.

        A waiter whose caller gave up must be cancelled, not forgotten: replies come in order,
        and a late one must not answer the next caller.
        """
        self._stats_waiters.append(waiter)
        self._control.append(protocol.encode_stats_request())

    def add_event_sink(self, sink: EventSink) -> None:
        """``sink`` gets every batch of router events from now on (the first one added
        subscribes this client: the caller sends the ``subscribe`` query)."""
        with self._lock:
            self.event_sinks.append(sink)

    def remove_event_sink(self, sink: EventSink) -> bool:
        """Stop handing events to ``sink``; True when it was the last one (the caller then
        unsubscribes)."""
        with self._lock:
            if sink in self.event_sinks:
                self.event_sinks.remove(sink)
            return not self.event_sinks

    def _resubscribe(self, step: Step) -> None:
        request = next(self._query_ids)
        step.send.append(protocol.encode_query(request, {"op": "subscribe", "types": None}))

    def ask(self, query: dict[str, Any], waiter: StatsWaiter, frames: Sequence[Frame] = ()) -> bool:
        """Send a QUERY (with opaque ``frames`` after it); ``waiter`` gets the router's
        answer. Returns True when the driver must be woken. (After the ENQUEUEs queued before
        it, so that an id just enqueued is known.)"""
        request = next(self._query_ids)
        self._queries[request] = waiter
        return self.add_after(protocol.encode_query(request, query, frames))

    def take_outgoing(self) -> list[list[Frame]]:
        """Everything queued since the last call, as messages: new function bodies first,
        then the SUBMITs, then the messages naming tasks, then the other messages (a CANCEL
        or ACK is posted after the SUBMIT of its task and must not overtake it)."""
        if not self._wake_pending and not self._control:
            # Nothing queued (read without the lock: whoever queues next wakes the driver).
            return []
        with self._lock:
            outbox, self._outbox = self._outbox, []
            kept, self._kept_outbox = self._kept_outbox, []
            bodies, self._new_bodies = self._new_bodies, []
            after, self._after = self._after, []
            self._wake_pending = False
        messages = [protocol.encode_fn_body(h, b, function_label(h)) for h, b in bodies]
        self.bodies_sent += len(bodies)
        messages += map(protocol.encode_submit, protocol.batches(outbox))
        messages += map(protocol.encode_enqueue, protocol.batches(kept))
        messages += after
        control = self._control
        while control:
            messages.append(control.popleft())
        return messages

    # -- outcomes -----------------------------------------------------------------------------

    def _results(self, items: list[ResultItem], step: Step) -> None:
        """Whose futures (or streams) a RESULT batch resolves. Nothing is unpickled here (this
        is the driver's thread): targets keep the frames until their caller asks."""
        results = step.results
        with self._lock:
            pending = self.pending
            for item in items:
                entry = pending.pop(item.task_id, None)
                if entry is None:  # not ours any more (cancelled)
                    continue
                self._remember(entry.item.fn_hash, entry.body)
                target = entry.receiver()
                if target is not None:  # None: a dropped stream
                    results.append((target, item))
            self._room.notify_all()

    def _live(self, task_ids: Iterable[int]) -> list[Receiver]:
        targets = [_receiver(self.pending.get(task_id)) for task_id in task_ids]
        return [t for t in targets if t is not None]

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
            for entry in self.pending.values():
                if entry.item.fn_hash == fn_hash:
                    return entry.body
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
        for target in self._live(task_ids):
            target._squall_started()

    # -- withdrawing: cancel() asks the router, which alone knows whether a worker has it ---

    def withdraw(self, futures: Iterable[_Withdrawable]) -> tuple[Withdrawal | None, bool]:
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
        early; a late "dropped" still cancels its future.
        """
        if request.answered.wait(timeout):
            return True
        self.abandon(request)
        return request.answered.is_set()

    def abandon(self, request: Withdrawal) -> None:
        """Expect no answer to ``request`` any more (given up on, or never sent)."""
        with self._lock:
            for task_id in request.task_ids:
                queue = self._withdrawals.get(task_id)
                if queue is not None and request in queue:
                    queue.remove(request)
                    if not queue:
                        del self._withdrawals[task_id]

    def _withdrawn(self, answers: list[tuple[int, bool]], step: Step) -> None:
        """The router's answer to a WITHDRAW.

        A task it dropped never ran and never will: its future is cancelled (in the driver's
        thread, whose callbacks run there too, as for a result), and only then is the caller
        woken, so that it finds the future in its final state.
        """
        with self._lock:
            for task_id, withdrawn in answers:
                queue = self._withdrawals.get(task_id)
                if queue:
                    request = queue.popleft()
                    if not queue:
                        del self._withdrawals[task_id]
                    request.left -= 1
                    if request.left == 0:
                        step.answered.append(request)
                if withdrawn and task_id in self.pending:
                    target = self.pending.pop(task_id).receiver()
                    if target is not None:
                        step.cancelled.append(target)
            if step.cancelled:
                self._room.notify_all()

    def _take_withdrawals(self) -> list[Withdrawal]:
        """Every WITHDRAW request still waiting for an answer that will not come (the router
        restarted, or the client is closing): its caller finds its futures not cancelled."""
        with self._lock:
            queues, self._withdrawals = self._withdrawals, {}
        return [request for queue in queues.values() for request in queue]

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

    def _resubmit_all(self, step: Step) -> int:
        """The router lost its state (it restarted): queue every pending task again.

        A stream that already delivered values fails instead: running it again would repeat
        them. Returns how many tasks were queued again.
        """
        with self._lock:
            self._announced.clear()
            self._outbox.clear()
            self._kept_outbox.clear()
            self._new_bodies.clear()
            again = []
            for task_id in sorted(self.pending):
                entry = self.pending[task_id]
                target = entry.receiver()
                if target is not None and not target._squall_rerunnable():
                    step.failed.append(
                        (target, WorkerLost("the router restarted while the stream was running"))
                    )
                    del self.pending[task_id]
                    continue
                if entry.item.fn_hash not in self._announced and entry.body:
                    self._announced.add(entry.item.fn_hash)
                    self._new_bodies.append((entry.item.fn_hash, entry.body))
                # A background task is enqueued again under its id: one the router kept
                # (on disk) is attached to, not run a second time.
                (self._kept_outbox if entry.item.key else self._outbox).append(entry.item)
                again.append(entry.item)
            self._wake_pending = True  # the driver takes them after this step
            self._room.notify_all()
        step.answered += self._take_withdrawals()  # asked of the router that is gone
        self._queries.clear()  # their waiters time out: the router that would answer is gone
        return len(again)

    def targets(self, background: bool = True) -> list[Receiver]:
        """The futures and streams pending; without ``background``, not those of background
        tasks (enqueued or attached): they are the router's, and a client closing neither
        waits for nor cancels them."""
        with self._lock:
            entries = [e for e in self.pending.values() if background or not e.item.key]
        return [t for t in map(Pending.receiver, entries) if t is not None]

    def _take_all(self) -> list[Receiver]:
        with self._lock:
            entries, self.pending = list(self.pending.values()), {}
            self._room.notify_all()
        return [t for t in map(Pending.receiver, entries) if t is not None]

    def fail_all(self, exc: BaseException) -> None:
        """End every pending task with ``exc`` (the client is closing), now, in this thread."""
        step = Step()
        step.failed = [(target, exc) for target in self._take_all()]
        step.answered = self._take_withdrawals()
        step.deliver()


def _receiver(entry: Pending | None) -> Receiver | None:
    """The future or stream of a pending entry; None if there is none (any more)."""
    return None if entry is None else entry.receiver()
