"""One worker process: a gevent hub running many tasks at once, results sent as they finish.

Greenlets, each with one job:

- the receiver reads TASK batches (draining the socket, one wake-up per burst) and starts one
  greenlet per task;
- each task greenlet unpickles its arguments, calls the function, pickles the outcome and puts it
  in the outbox;
- the sender is the only greenlet that writes to the socket (a multipart send from two greenlets
  could interleave frames); it wakes when the outbox fills and sends everything finished in that
  turn of the hub as one RESULT batch, so results go out the moment their task ends, batched
  only with others that ended at the same instant;
- the heartbeat tells the router this process lives, says HELLO again after a silence (the router
  restarted or declared us dead), and exits when the parent node is gone.

A process drains (takes no new tasks, lets running ones finish, hands the rest back) on SIGTERM,
and also to be recycled: after ``max_tasks_per_process`` tasks or past
``max_memory_per_process`` MiB of resident memory, it drains and exits with
``RESTART_EXIT_CODE``, and its node starts a fresh one.

Functions arrive by hash; a body this process has not seen is fetched once from the router while
the tasks that need it wait.

This module expects gevent's monkey-patching to be done already (``runner.main`` does it first).
"""

from __future__ import annotations

import collections
import contextvars
import functools
import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import greenlet
import zmq.green as zmq
from gevent import monkey

from squall import functions, protocol, serialization, tracing, transport
from squall import options as task_options
from squall.config import DRAIN_BATCH, WorkerConfig, prepare_socket
from squall.errors import Refused, SerializationError, SquallError
from squall.log import get_logger
from squall.options import TaskOptions
from squall.procinfo import resident_bytes
from squall.protocol import (
    KIND_JSON,
    KIND_STREAM,
    MAX_ITEMS,
    ErrorCode,
    MsgType,
    Role,
    Status,
    TaskFlag,
    TaskItem,
)
from squall.runner import calls, forks
from squall.runner.watchdog import REFUSED_EXIT_CODE, RESTART_EXIT_CODE, Watchdog

if TYPE_CHECKING:
    import asyncio

log = get_logger(__name__)

FUNCTION_CACHE_SIZE = 1024
#: stream values whose pickle is smaller than this are packed together into one frame
PACK_LIMIT = 16 * 1024
#: results of background tasks kept after sending, at most, and for how many seconds: a
#: router that restarts gets them again (it would otherwise run those tasks twice)
KEPT_RESULTS = 100_000
KEPT_RESULTS_FOR = 30.0
#: seconds between two looks at the process's resident memory (with a memory limit)
MEMORY_CHECK_INTERVAL = 1.0
#: heartbeats without a WELCOME before "still no answer from the router" (10 s by default),
#: then twice as long each time, up to UNANSWERED_WARN_MAX seconds
UNANSWERED_WARN_BEATS = 10
UNANSWERED_WARN_MAX = 60.0
#: seconds the sender may take, at exit, to send what is left and say DISCONNECT
FINAL_SEND_TIMEOUT = 3.0
#: runner greenlets kept for the next tasks once a burst is over (more are made as needed)
IDLE_RUNNERS = 64
#: seconds without a task start before the runners past IDLE_RUNNERS are let go
RUNNERS_KEPT_FOR = 2.0
_KEPT = int(TaskFlag.KEPT)
#: what libzmq's socket monitor reports when the router refuses our CURVE handshake
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

_native_ident = monkey.get_original("_thread", "get_ident")


class FunctionCache:
    """Decoded functions by hash, least recently used first out."""

    def __init__(self, size: int = FUNCTION_CACHE_SIZE) -> None:
        self._fns: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self.size = size

    def get(self, fn_hash: bytes) -> Any:
        fn = self._fns.get(fn_hash)
        if fn is not None:
            self._fns.move_to_end(fn_hash)
        return fn

    def put(self, fn_hash: bytes, fn: Any) -> None:
        self._fns[fn_hash] = fn
        if len(self._fns) > self.size:
            self._fns.popitem(last=False)


class _StreamWindow:
    """Flow control of one stream: the generator waits while ``window`` items are unread."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.sent = 0
        self.acked = 0
        self.chunk: list[bytes] = []
        self._room = gevent.event.Event()

    def wait_for_room(self) -> None:
        while self.sent - self.acked >= self.window:
            self._room.clear()
            self._room.wait()

    def untouched(self) -> bool:
        """Whether nothing was yielded yet: only then may a failed stream be run again."""
        return self.sent == 0

    def ack(self, consumed: int) -> None:
        self.acked += consumed
        self._room.set()


class WorkerProcess:
    """A worker process connected to the router; :meth:`run` blocks until it stops."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A random routing id of our own (or our node's choice, so that it can vouch for us):
        # nobody can guess and claim it, and the watchdog thread can speak for this socket.
        self.worker_id = (
            bytes.fromhex(config.worker_id) if config.worker_id else protocol.new_peer_id()
        )
        self.socket.setsockopt(zmq.ROUTING_ID, self.worker_id)
        if config.auth is not None:
            from squall.auth import apply_client_keys  # not imported without --auth

            apply_client_keys(self.socket, config.auth, config.key)
        self.functions = FunctionCache()
        #: the functions this process serves by name (``--import``), by their name hash
        self.named = {
            protocol.name_hash(name): fn
            for name, fn in functions.import_modules(config.imports).items()
        }
        self.function_names = tuple(sorted(functions.registered())) if config.imports else ()
        #: task id -> monotonic deadline, for tasks with a timeout (read by the watchdog)
        self.deadlines: dict[int, float] = {}
        self.hub_tick = time.monotonic()
        #: the highest router task id received (read by the watchdog: later ones are unread)
        self.last_task = 0
        self._router_epoch: int | None = None
        #: tasks taken so far (for max_tasks_per_process)
        self.accepted = 0
        #: tasks received while draining: never started, handed back with the rest
        self._held: dict[int, TaskItem] = {}
        self._accepting = True
        self._drain_until = math.inf
        self._exit_code = 0
        self._main_thread = _native_ident()
        #: fn hash -> tasks waiting for its body
        self._awaiting_body: dict[bytes, list[TaskItem]] = {}
        self._results: list[tuple[int, int, list[Any]]] = []
        #: background tasks running here (the router keeps them): their results are kept a
        #: while after sending, for a router that restarts before it got them
        self._kept: set[int] = set()
        self._kept_results: collections.deque[tuple[float, tuple[int, int, list[Any]]]] = (
            collections.deque(maxlen=KEPT_RESULTS)
        )
        self._items: list[protocol.StreamItem] = []
        #: streams with small values waiting to be packed into one ITEM at the next flush
        self._chunked: dict[int, _StreamWindow] = {}
        #: task id -> the runner greenlet running it now
        self._tasks: dict[int, greenlet.greenlet] = {}
        #: tasks to start at the hub's next turn (all in one callback), in order of arrival
        self._starting: dict[int, tuple[TaskItem, Any]] = {}
        self._start_scheduled = False
        #: runners waiting for their next task. Plain greenlets, reused: a new greenlet per
        #: task cost ~10 us (on Python 3.11 each one maps and unmaps its own frame stack),
        #: switching to a waiting one well under 1 us.
        self._idle: list[greenlet.greenlet] = []
        self._last_start = 0.0
        self._hub = gevent.get_hub()
        self._streams: dict[int, _StreamWindow] = {}
        self.bridge = calls.AsyncBridge()
        self._control: list[list[Any]] = []
        self._wake_sender = gevent.event.Event()
        self._last_heard = time.monotonic()
        self._stopping = gevent.event.Event()
        self._welcomed = gevent.event.Event()
        #: the sender's cue to send what is left, say DISCONNECT and return
        self._closing = False

    def run(self) -> int:
        """Serve until stopped; return the process's exit status."""
        prepare_socket(self.socket, self.config.connect)
        # Before connecting: a refusal can come within a millisecond.
        monitor = None
        if self.config.auth is not None:
            monitor = self.socket.get_monitor_socket(_HANDSHAKE_FAILED)
        self.socket.connect(self.config.connect)
        log.info(
            "worker connecting", router=self.config.connect, concurrency=self.config.concurrency
        )
        self._say_hello()
        watchdog = Watchdog(self.config, self.worker_id, self)
        watchdog.start()
        sender = gevent.spawn(self._send_loop)
        workers = [
            gevent.spawn(self._receive),
            gevent.spawn(self._heartbeat),
            gevent.spawn(self._tick),
            gevent.spawn(self._warn_unanswered),
        ]
        if self.config.max_memory_per_process:
            workers.append(gevent.spawn(self._watch_memory))
        if monitor is not None:
            workers.append(gevent.spawn(self._watch_handshake, monitor))
        self._stopping.wait()
        if self._exit_code != REFUSED_EXIT_CODE:
            self._drain()
        watchdog.stop()
        gevent.killall(workers)
        self._close_sender(sender)
        self.socket.close(linger=500)
        return self._exit_code

    def _close_sender(self, sender: gevent.Greenlet[Any, Any]) -> None:
        """Let the sender send what is left (results of finished tasks, then DISCONNECT, so
        the router takes back the rest) in its own greenlet: a second greenlet sending on the
        socket while it waits to send would trip zmq.green. Bounded: a router that never
        answered will not take them."""
        self._closing = True
        self._wake_sender.set()
        timeout = 0.0 if self._exit_code == REFUSED_EXIT_CODE else FINAL_SEND_TIMEOUT
        sender.join(timeout)
        sender.kill()

    def stop(self, drain: bool = False) -> None:
        """Stop; with ``drain``, take no new tasks and give running ones ``grace`` seconds."""
        self._stop_taking(time.monotonic() + (self.config.grace if drain else 0.0))

    def recycle(self, reason: str, **why: Any) -> None:
        """Drain with no time limit, exit, and be replaced by a fresh process (see module)."""
        if not self._accepting:
            return
        log.info("recycling this worker process", reason=reason, tasks=self.accepted, **why)
        self._exit_code = RESTART_EXIT_CODE
        self._stop_taking(math.inf)

    def _stop_taking(self, drain_until: float) -> None:
        # A later, stricter request wins: SIGTERM during a recycle brings in the grace period.
        self._drain_until = min(self._drain_until, drain_until)
        self._accepting = False
        self._stopping.set()

    def _drain(self) -> None:
        """Take no new tasks; wait for running ones until ``_drain_until``."""
        self._control.append(protocol.encode_credit(0))  # no new tasks, please
        self._wake_sender.set()
        if not self._busy() or time.monotonic() >= self._drain_until:
            return
        grace = self._drain_until - time.monotonic()
        log.info("draining", running=self._busy(), grace=None if grace == math.inf else grace)
        while self._busy() and time.monotonic() < self._drain_until:
            gevent.sleep(0.05)
        if self._busy():
            log.warning("grace period over; handing unfinished tasks back", tasks=self._busy())

    def _busy(self) -> int:
        """Tasks this process still owes an outcome: greenlets, coroutines, and tasks waiting
        for their function's body."""
        waiting = sum(len(items) for items in self._awaiting_body.values())
        return len(self._tasks) + len(self._starting) + self.bridge.running + waiting

    def _tick(self) -> None:
        """Prove to the watchdog thread that the hub still runs."""
        while True:
            self.hub_tick = now = time.monotonic()
            if len(self._idle) > IDLE_RUNNERS and now - self._last_start > RUNNERS_KEPT_FOR:
                self._hub.loop.run_callback(self._let_runners_go)
            gevent.sleep(0.1)

    def blocking_task(self) -> int | None:
        """The task the main thread is running now (called by the watchdog thread).

        Walks the main thread's stack down to the greenlet's first frame, where a task
        greenlet runs :meth:`_run` with its ``item``; failing that,
        the coroutine the process's asyncio loop is stepping. Only called while the hub is
        blocked, so the task path pays nothing for it.
        """
        frame = sys._current_frames().get(self._main_thread)
        while frame is not None:
            if frame.f_code in _TASK_CODES:
                item = frame.f_locals.get("item")
                return item.task_id if isinstance(item, TaskItem) else None
            frame = frame.f_back
        return self.bridge.stepping()

    def _warn_unanswered(self) -> None:
        """Say, again and again, that the router has not answered yet, and for how long: a
        worker at a wrong or dead address would otherwise look merely idle."""
        started = time.monotonic()
        period = min(UNANSWERED_WARN_BEATS * self.config.heartbeat, UNANSWERED_WARN_MAX)
        while not self._welcomed.wait(period):
            log.warning(
                "still no answer from the router",
                router=self.config.connect,
                waited_s=round(time.monotonic() - started),
            )
            period = min(period * 2, UNANSWERED_WARN_MAX)

    def _watch_handshake(self, monitor: zmq.Socket[Any]) -> None:
        """Stop at once, with exit status REFUSED_EXIT_CODE, if the router refuses our key:
        libzmq would otherwise retry the handshake forever in silence."""
        from zmq.utils.monitor import recv_monitor_message  # only with --auth

        try:
            event = recv_monitor_message(monitor)
        finally:
            self.socket.disable_monitor()
            monitor.close(linger=0)
        error = _refusal(self.config, event)
        log.error(str(error), router=self.config.connect, key=self.config.key)
        self._exit_code = REFUSED_EXIT_CODE
        self._stop_taking(0.0)

    def _watch_memory(self) -> None:
        """Recycle the process once its resident memory passes the limit."""
        limit = self.config.max_memory_per_process << 20
        while self._accepting:
            gevent.sleep(MEMORY_CHECK_INTERVAL)
            rss = resident_bytes()
            if rss is None:
                log.warning("cannot read resident memory here; --max-memory-per-process is off")
                return
            if rss > limit and self.accepted:  # a fresh process over it would only loop
                self.recycle("max-memory-per-process", rss_mib=rss >> 20)

    # -- receiving --------------------------------------------------------------------------

    def _receive(self) -> None:
        socket = self.socket
        while True:
            # The green recv waits for a message without blocking the hub; the rest of it,
            # and what came with it, are read by the cheap calls.
            self._handle(transport.recv(socket, first=socket.recv(copy=False)))
            for _ in range(DRAIN_BATCH):
                try:
                    frames = transport.recv(socket)
                except zmq.Again:
                    break
                self._handle(frames)

    def _handle(self, frames: list[Any]) -> None:
        self._last_heard = time.monotonic()
        try:
            type_, body = protocol.parse_header([frames[0].bytes])
            if type_ is MsgType.TASK:
                self._on_tasks(protocol.decode_task(body, frames[1:]))
            elif type_ is MsgType.WELCOME:
                self._on_welcome(protocol.decode_welcome(body))
            elif type_ is MsgType.ACK:
                for task_id, consumed in protocol.decode_ack(body, frames[1:]):
                    stream = self._streams.get(task_id)
                    if stream is not None:
                        stream.ack(consumed)
            elif type_ is MsgType.CANCEL:
                self._on_cancel(protocol.decode_cancel(body, frames[1:]))
            elif type_ is MsgType.FN_BODY:
                fn_hash, fn_body, _ = protocol.decode_fn_body(body, frames[1:])
                self._on_fn_body(fn_hash, fn_body)
            elif type_ is MsgType.ERROR:
                code, reason = protocol.decode_error(body)
                log.warning("router refused a message", code=code, reason=reason)
                if code == ErrorCode.UNKNOWN_PEER:
                    self._say_hello()
            elif type_ is MsgType.DISCONNECT:
                log.info("router is going away; will say HELLO when it is back")
            # HEARTBEAT needs nothing beyond the liveness stamp above.
        except SquallError as exc:
            log.warning("malformed message from router dropped", error=str(exc))

    def _on_welcome(self, welcome: protocol.Welcome) -> None:
        # A new router numbers its tasks afresh: the highest id seen from the old one means
        # nothing to it.
        self._welcomed.set()
        if welcome.epoch != self._router_epoch:
            restarted = self._router_epoch is not None
            self._router_epoch = welcome.epoch
            self.last_task = 0
            if restarted and self._kept_results:
                # It may have lost what we sent as it went down: background tasks it took
                # back from its store would run again without these.
                self._results.extend(result for _, result in self._kept_results)
                self._wake_sender.set()
                log.info("results of background tasks sent again", tasks=len(self._kept_results))

    def _on_tasks(self, items: list[TaskItem]) -> None:
        last = self.last_task
        for item in items:
            if item.task_id > last:
                last = item.task_id
        self.last_task = last
        if not self._accepting:
            self._hold(items)
            return
        limit = self.config.max_tasks_per_process
        if limit and self.accepted + len(items) >= limit:
            taken = max(0, limit - self.accepted)
            self._hold(items[taken:])
            self._accept(items[:taken])
            self.recycle("max-tasks-per-process")
            return
        self._accept(items)

    def _hold(self, items: list[TaskItem]) -> None:
        """Keep tasks that came while draining unstarted: the router takes them back."""
        for item in items:
            self._held[item.task_id] = item

    def _accept(self, items: list[TaskItem]) -> None:
        self.accepted += len(items)
        for item in items:
            if item.flags & _KEPT:
                self._kept.add(item.task_id)
            fn = self.functions.get(item.fn_hash) or self.named.get(item.fn_hash)
            if fn is not None:
                self._start(item, fn)
                continue
            waiting = self._awaiting_body.setdefault(item.fn_hash, [])
            if not waiting:
                self._control.append(protocol.encode_fn_fetch(item.fn_hash))
                self._wake_sender.set()
            waiting.append(item)

    def _on_fn_body(self, fn_hash: bytes, body: Any) -> None:
        waiting = self._awaiting_body.pop(fn_hash, [])
        try:
            if len(body) == 0:
                raise SquallError("function body is no longer available at the router or client")
            fn = serialization.loads_function(body)
        except Exception as exc:  # e.g. a module the function needs is not installed here
            for item in waiting:
                self._finish(item.task_id, Status.ERROR, serialization.dumps_exception(exc))
            return
        self.functions.put(fn_hash, fn)
        for item in waiting:
            self._start(item, fn)

    def _on_cancel(self, task_ids: list[int]) -> None:
        for task_id in task_ids:
            runner = self._tasks.get(task_id)
            if runner is not None:
                # GreenletExit inside the task, from the hub: its finally blocks run.
                self._hub.loop.run_callback(self._kill, task_id, runner)
                continue
            if self._starting.pop(task_id, None) is not None:  # it never starts
                self._finish(task_id, Status.CANCELLED, [])
                continue
            if self._held.pop(task_id, None) is not None:
                self._finish(task_id, Status.CANCELLED, [])
                continue
            if self.bridge.cancel(task_id):
                continue
            for waiting in self._awaiting_body.values():
                for item in [i for i in waiting if i.task_id == task_id]:
                    waiting.remove(item)
                    self._finish(task_id, Status.CANCELLED, [])

    # -- running ----------------------------------------------------------------------------

    def _kill(self, task_id: int, runner: greenlet.greenlet) -> None:
        # Only while it runs this task: once it ended, its runner may run another.
        current = self._tasks.get(task_id)
        if current is not None and current is runner:
            current.throw(gevent.GreenletExit)

    def _start(self, item: TaskItem, fn: Any) -> None:
        self._starting[item.task_id] = (item, fn)
        if not self._start_scheduled:
            self._start_scheduled = True
            self._hub.loop.run_callback(self._start_queued)

    def _start_queued(self) -> None:
        """Start the queued tasks, in order, each in a waiting runner or a new one (a hub
        callback: each runs until it first waits, or ends and waits for the next task)."""
        self._start_scheduled = False
        self._last_start = time.monotonic()
        # Taken whole: popping a dict from the front one by one is quadratic. Nothing else
        # runs meanwhile (a task that waits switches back here), so no CANCEL can miss these.
        starting, self._starting = self._starting, {}
        idle, tasks = self._idle, self._tasks
        for task_id, (item, fn) in starting.items():
            runner = idle.pop() if idle else greenlet.greenlet(self._serve, parent=self._hub)
            tasks[task_id] = runner
            # Each task in a context of its own, as in a greenlet of its own: a contextvar one
            # task sets is not seen by the next. (Thread-locals, as in a thread pool, stay.)
            runner.gr_context = contextvars.Context()
            runner.switch(item, fn)

    def _serve(self, item: TaskItem, fn: Any) -> None:
        """A runner greenlet: run a task, wait among the idle runners for the next, again.
        A GreenletExit while waiting (runners let go after a burst) ends it."""
        me = greenlet.getcurrent()
        hub = self._hub
        try:
            while True:
                self._run(item, fn)
                self._idle.append(me)
                item, fn = hub.switch()
        except gevent.GreenletExit:
            pass

    def _let_runners_go(self) -> None:
        """After a burst, end the waiting runners past IDLE_RUNNERS (each holds its stacks)."""
        while len(self._idle) > IDLE_RUNNERS:
            self._idle.pop(0).throw(gevent.GreenletExit)

    def _run(self, item: TaskItem, fn: Any) -> None:
        """Run one task, a call or a stream, and send its outcome.

        The one skeleton for every kind of task: unpickle the call, put in its dependencies'
        values, make attempts under the task's options (:mod:`squall.options`: each attempt
        timed, retried on ``retry_on`` errors; a stream only while nothing was yielded), and
        turn what came of it into the outcome. An ``async def`` call is handed to the asyncio
        loop instead, with the rest of its attempts (see :meth:`_hand_off`).
        """
        task_id = item.task_id
        runner = gevent.getcurrent()
        runner.squall_task_id = task_id  # for its log lines (squall.tracing.log_context)
        stream = None
        if item.kind & KIND_STREAM:
            stream = self._streams[task_id] = _StreamWindow(max(1, item.window))
        as_json = bool(item.kind & KIND_JSON)
        encode = _as_json if as_json else self._pickled
        status, frames = Status.CANCELLED, list[Any]()
        handed_off = False
        args: Any
        try:
            if as_json:
                args, kwargs, options = functions.json_call(item.frames)
            else:
                args, kwargs, options = serialization.loads(item.frames)
                args, kwargs = calls.resolve(args, kwargs, item.deps)
            options = options or task_options.DEFAULT
            if options.traceparent is not None:  # the caller's trace: run as its child span
                outcome = self._traced(task_id, fn, args, kwargs, options, stream, encode)
            else:
                outcome = self._attempts(task_id, fn, args, kwargs, options, stream, encode)
            if outcome is None:  # handed to the asyncio loop, which finishes it
                handed_off = True
                return
            status, frames = outcome
        except gevent.GreenletExit:
            pass
        except BaseException as exc:  # SystemExit and KeyboardInterrupt in a task are its outcome
            status = Status.ERROR
            frames = serialization.dumps_exception(exc, qualified_name(fn), pickled=not as_json)
        finally:
            runner.squall_task_id = None
            if stream is not None:
                self._move_chunk(task_id)
                del self._streams[task_id]
            self._forget_task(task_id)
            if not handed_off:
                self._finish(task_id, status, frames)

    def _attempts(
        self,
        task_id: int,
        fn: Any,
        args: Any,
        kwargs: Any,
        options: TaskOptions,
        stream: _StreamWindow | None,
        encode: Encoder,
    ) -> tuple[Status, list[Any]] | None:
        """The task's attempts: one, or as many as its retries allow."""
        if not options.retries:
            return self._attempt(task_id, fn, args, kwargs, options, stream, encode)
        attempt = functools.partial(
            self._attempt, task_id, fn, args, kwargs, options, stream, encode
        )
        veto = None if stream is None else stream.untouched
        told = functools.partial(self._report_retry, task_id)
        return task_options.retrying(attempt, options, gevent.sleep, veto, told)

    def _report_retry(self, task_id: int, attempt: int, error: BaseException) -> None:
        """Tell the router an attempt failed and the task runs again here (its events and
        records count the attempts); the error goes as text only."""
        retried = protocol.Retried(
            task_id, attempt, serialization.type_name(type(error)), str(error)
        )
        self._control.append(protocol.encode_retried([retried]))
        self._wake_sender.set()

    def _traced(
        self,
        task_id: int,
        fn: Any,
        args: Any,
        kwargs: Any,
        options: TaskOptions,
        stream: _StreamWindow | None,
        encode: Encoder,
    ) -> tuple[Status, list[Any]] | None:
        """:meth:`_attempts` as the child span of the caller's trace, its log lines tagged
        with the trace id (only tasks sent with a ``traceparent`` come this way)."""
        assert options.traceparent is not None
        current = gevent.getcurrent()
        current.squall_trace_id = tracing.trace_id(options.traceparent)
        try:
            with tracing.remote_span(options.traceparent, qualified_name(fn)):
                return self._attempts(task_id, fn, args, kwargs, options, stream, encode)
        finally:
            current.squall_trace_id = None

    def _attempt(
        self,
        task_id: int,
        fn: Any,
        args: Any,
        kwargs: Any,
        options: TaskOptions,
        stream: _StreamWindow | None,
        encode: Encoder,
    ) -> tuple[Status, list[Any]] | None:
        """One attempt, interrupted by TaskTimeout past ``options.timeout``: the call and all
        it produces (a generator drained for submit, a stream's every value and pause), each
        value made frames by ``encode``."""
        timeout = options.timeout
        if timeout is None:
            return self._produce(task_id, fn, args, kwargs, options, stream, encode)
        self.deadlines[task_id] = time.monotonic() + timeout
        timer = gevent.Timeout(timeout)  # a BaseException: user code cannot swallow it
        timer.start()
        try:
            return self._produce(task_id, fn, args, kwargs, options, stream, encode)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise task_options.timed_out(timeout) from None
        finally:
            timer.close()
            self.deadlines.pop(task_id, None)  # not during a retry's backoff pause

    def _produce(
        self,
        task_id: int,
        fn: Any,
        args: Any,
        kwargs: Any,
        options: TaskOptions,
        stream: _StreamWindow | None,
        encode: Encoder,
    ) -> tuple[Status, list[Any]] | None:
        """Call ``fn`` and make the outcome of what it returns: a stream's values sent as
        they come, a coroutine handed to the asyncio loop (None), anything else collected
        and pickled. In a forked child of the task, the end of the process instead."""
        try:
            result = fn(*args, **kwargs)
            if stream is not None:
                iterator = calls.iterate(result, fn, self.bridge)
                return self._pump(task_id, fn, iterator, stream, encode)
            if inspect.iscoroutine(result):  # async def: runs on the process's asyncio loop
                self._hand_off(task_id, fn, args, kwargs, options, result, encode)
                return None
            value = calls.collect(result, self.bridge)
        except BaseException:
            forks.leave_child(forks.CHILD_RAISED)
            raise
        forks.leave_child(forks.CHILD_RETURNED)
        return encode(value, fn)

    def _hand_off(
        self,
        task_id: int,
        fn: Any,
        args: Any,
        kwargs: Any,
        options: TaskOptions,
        coroutine: Any,
        encode: Encoder,
    ) -> None:
        """Run an ``async def`` task's coroutine as a task of the asyncio loop, its attempts
        under the same options (:func:`squall.options.retrying_async`); no greenlet waits."""
        work = coroutine
        if options.timeout is not None or options.retries:
            again = functools.partial(fn, *args, **kwargs)
            mark = functools.partial(self._mark_deadline, task_id)
            told = functools.partial(self._report_retry, task_id)
            work = task_options.retrying_async(again, options, mark, coroutine, told)
        done = functools.partial(self._coroutine_done, task_id, fn, encode)
        self.bridge.spawn(task_id, work, done)

    def _mark_deadline(self, task_id: int, deadline: float | None) -> None:
        """Tell the watchdog a coroutine attempt's deadline (None: the attempt is over)."""
        if deadline is None:
            self.deadlines.pop(task_id, None)
        else:
            self.deadlines[task_id] = deadline

    def _coroutine_done(
        self, task_id: int, fn: Any, encode: Encoder, task: asyncio.Task[Any]
    ) -> None:
        if task.cancelled():
            self._finish(task_id, Status.CANCELLED, [])
            return
        error = task.exception()
        if error is not None:
            pickled = encode is not _as_json
            summary = serialization.dumps_exception(error, qualified_name(fn), pickled=pickled)
            self._finish(task_id, Status.ERROR, summary)
        else:
            self._finish(task_id, *encode(task.result(), fn))

    def _pump(
        self,
        task_id: int,
        fn: Any,
        iterator: Iterator[Any],
        stream: _StreamWindow,
        encode: Encoder,
    ) -> tuple[Status, list[Any]]:
        """Send each value a stream's generator yields as it comes, pausing while ``window``
        values are unread; the outcome is the stream's end (or the value that would not
        pickle). The generator is closed however this ends: its finally blocks run, even
        when the reader left early."""
        try:
            for value in iterator:
                status, frames = encode(value, fn)
                if status != Status.OK:
                    return status, frames
                if len(frames) == 1 and len(frames[0]) < PACK_LIMIT:
                    stream.chunk.append(frames[0])  # packed with its neighbours at flush
                    self._chunked[task_id] = stream
                else:
                    self._move_chunk(task_id)  # keep order: what came before goes first
                    self._items.append(protocol.StreamItem(task_id, 1, False, frames))
                self._wake_sender.set()
                stream.sent += 1
                forks.leave_child(forks.CHILD_RETURNED)  # a fork in the generator: not here
                stream.wait_for_room()
            return encode(None, fn)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _forget_task(self, task_id: int) -> None:
        # Only our own entry: the id may already name another task (a router restart).
        if self._tasks.get(task_id) is greenlet.getcurrent():
            del self._tasks[task_id]

    def _move_chunk(self, task_id: int) -> None:
        """Queue a stream's small values as one packed ITEM."""
        stream = self._chunked.pop(task_id, None)
        if stream is not None and stream.chunk:
            packed = protocol.pack_values(stream.chunk)
            self._items.append(protocol.StreamItem(task_id, len(stream.chunk), True, [packed]))
            stream.chunk = []

    @staticmethod
    def _pickled(value: Any, fn: Any) -> tuple[Status, list[Any]]:
        """``value`` pickled, or the error outcome of task function ``fn`` if it cannot be."""
        try:
            return Status.OK, serialization.dumps(value)
        except Exception as exc:
            error = SerializationError(
                f"result of type {type(value).__qualname__} cannot be pickled: {exc}"
            )
            return Status.ERROR, serialization.dumps_exception(error, qualified_name(fn))

    def _finish(self, task_id: int, status: int, frames: list[Any]) -> None:
        self._results.append((task_id, status, frames))
        self._wake_sender.set()
        if self._kept and task_id in self._kept:
            self._kept.discard(task_id)
            now = time.monotonic()
            kept = self._kept_results
            kept.append((now, (task_id, status, frames)))
            while kept[0][0] < now - KEPT_RESULTS_FOR:
                kept.popleft()

    # -- sending ----------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._closing:
            self._wake_sender.wait()
            self._wake_sender.clear()
            self._flush()
        self._flush()
        self.socket.send_multipart(protocol.encode_disconnect())

    def _flush(self) -> None:
        """Send what is queued: control messages, then stream items, then results (so a
        stream's items never arrive after its end)."""
        control, self._control = self._control, []
        for frames in control:
            self._send(frames)
        for task_id in list(self._chunked):
            self._move_chunk(task_id)
        while self._items:
            items, self._items = self._items[:MAX_ITEMS], self._items[MAX_ITEMS:]
            self._send(protocol.encode_items(items))
        while self._results:
            results, self._results = self._results[:MAX_ITEMS], self._results[MAX_ITEMS:]
            self._send(protocol.encode_result(results))
        transport.rearm(self.socket)  # the receiving greenlet may have a message to read

    def _send(self, frames: list[Any]) -> None:
        """Send one message (only the sender greenlet calls this); while the socket will not
        take it (no router, or it reads slowly), wait the green way, yielding to the hub."""
        try:
            transport.send(self.socket, frames)
        except zmq.Again:
            self.socket.send_multipart(frames, copy=False)

    def _say_hello(self) -> None:
        self._control.append(
            # Draining: say HELLO with no capacity, or the router would send work again.
            protocol.encode_hello(
                Role.WORKER,
                os.getpid(),
                self.config.concurrency if self._accepting else 0,
                queues=self.config.queues,
                functions=self.function_names,
                host=_HOST,
            )
        )
        self._wake_sender.set()

    def _heartbeat(self) -> None:
        interval = self.config.heartbeat
        while True:
            gevent.sleep(interval)
            if self.config.parent_pid is not None and os.getppid() != self.config.parent_pid:
                log.info("worker node gone; worker process exits")
                self.stop()
                return
            if time.monotonic() - self._last_heard > 3 * interval:
                self._say_hello()  # the router restarted or forgot us
                self._last_heard = time.monotonic()
            # Its memory rides the beat (one read of /proc a second), for squall status.
            self._control.append(protocol.encode_heartbeat(rss=resident_bytes() or 0))
            self._wake_sender.set()


#: the host this process runs on, for people (squall status)
_HOST = os.uname().nodename

#: makes one value (a result, a yielded value) the frames of an outcome: pickles, or JSON
Encoder = Callable[[Any, Any], tuple[Status, list[Any]]]


def _as_json(value: Any, fn: Any) -> tuple[Status, list[Any]]:
    """``value`` as a JSON frame, or the error outcome (no pickle) naming what JSON cannot
    encode."""
    try:
        return Status.OK, [functions.json_value(value)]
    except SerializationError as exc:
        return Status.ERROR, serialization.dumps_exception(exc, qualified_name(fn), pickled=False)


def qualified_name(fn: Any) -> str:
    """``module.qualname`` of a task's function, for the error summary the router logs."""
    name = getattr(fn, "__qualname__", None)
    if not isinstance(name, str):
        return serialization.describe(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if isinstance(module, str) else name


def _refusal(config: WorkerConfig, event: Mapping[str, Any]) -> Refused:
    """The one-line error for a failed handshake ``event`` from the socket monitor."""
    key = f"{config.key!r} in {config.auth}"
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        why = f"key {key} not listed (ZAP status {event['value']})"
    else:
        why = f"handshake with key {key} failed: wrong router.key, or not CURVE"
    return Refused(f"the router at {config.connect} refused this key ({why})")


_TASK_CODES = (WorkerProcess._run.__code__,)
