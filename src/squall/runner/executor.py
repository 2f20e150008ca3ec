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

Functions arrive by hash; a body this process has not seen is fetched once from the router while
the tasks that need it wait.

This module expects gevent's monkey-patching to be done already (``runner.main`` does it first).
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any

import gevent
import gevent.event
import zmq.green as zmq

from squall import protocol, serialization
from squall.config import WorkerConfig
from squall.errors import SerializationError, SquallError
from squall.log import get_logger
from squall.protocol import ErrorCode, MsgType, Role, Status, TaskItem

log = get_logger(__name__)

DRAIN_BATCH = 2000
MAX_ITEMS = 1000
FUNCTION_CACHE_SIZE = 1024


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


class WorkerProcess:
    """A worker process connected to the router; :meth:`run` blocks until it stops."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.functions = FunctionCache()
        #: fn hash -> tasks waiting for its body
        self._awaiting_body: dict[bytes, list[TaskItem]] = {}
        self._results: list[tuple[int, int, list[Any]]] = []
        self._control: list[list[Any]] = []
        self._wake_sender = gevent.event.Event()
        self._last_heard = time.monotonic()
        self._stopping = gevent.event.Event()
        self.running = 0

    def run(self) -> None:
        self.socket.connect(self.config.connect)
        log.info(
            "worker connecting", router=self.config.connect, concurrency=self.config.concurrency
        )
        self._say_hello()
        workers = [
            gevent.spawn(self._receive),
            gevent.spawn(self._send_loop),
            gevent.spawn(self._heartbeat),
        ]
        self._stopping.wait()
        gevent.killall(workers[:1] + workers[2:])
        self._flush()  # results of tasks that finished are not thrown away
        self.socket.send_multipart(protocol.encode_disconnect())
        workers[1].kill()
        self.socket.close(linger=500)

    def stop(self) -> None:
        self._stopping.set()

    # -- receiving --------------------------------------------------------------------------

    def _receive(self) -> None:
        while True:
            frames = self.socket.recv_multipart(copy=False)
            self._handle(frames)
            for _ in range(DRAIN_BATCH):
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(frames)

    def _handle(self, frames: list[Any]) -> None:
        self._last_heard = time.monotonic()
        try:
            type_, body = protocol.parse_header([frames[0].bytes])
            if type_ is MsgType.TASK:
                self._on_tasks(protocol.decode_task(body, frames[1:]))
            elif type_ is MsgType.FN_BODY:
                self._on_fn_body(*protocol.decode_fn_body(body, frames[1:]))
            elif type_ is MsgType.ERROR:
                code, reason = protocol.decode_error(body)
                log.warning("router refused a message", code=code, reason=reason)
                if code == ErrorCode.UNKNOWN_PEER:
                    self._say_hello()
            elif type_ is MsgType.DISCONNECT:
                log.warning("router is going away; will say HELLO when it is back")
            # WELCOME and HEARTBEAT need nothing beyond the liveness stamp above.
        except SquallError as exc:
            log.warning("malformed message from router dropped", error=str(exc))

    def _on_tasks(self, items: list[TaskItem]) -> None:
        for item in items:
            fn = self.functions.get(item.fn_hash)
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

    # -- running ----------------------------------------------------------------------------

    def _start(self, item: TaskItem, fn: Any) -> None:
        self.running += 1
        gevent.spawn(self._run, item, fn)

    def _run(self, item: TaskItem, fn: Any) -> None:
        try:
            args, kwargs = serialization.loads(item.frames)
            result = fn(*args, **kwargs)
            try:
                frames = serialization.dumps(result)
                status = Status.OK
            except Exception as exc:
                error = SerializationError(
                    f"result of type {type(result).__qualname__} cannot be pickled: {exc}"
                )
                frames, status = serialization.dumps_exception(error), Status.ERROR
        except gevent.GreenletExit:
            raise
        except BaseException as exc:  # SystemExit and KeyboardInterrupt in a task are its outcome
            frames, status = serialization.dumps_exception(exc), Status.ERROR
        finally:
            self.running -= 1
        self._finish(item.task_id, status, frames)

    def _finish(self, task_id: int, status: int, frames: list[Any]) -> None:
        self._results.append((task_id, status, frames))
        self._wake_sender.set()

    # -- sending ----------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            self._wake_sender.wait()
            self._wake_sender.clear()
            self._flush()

    def _flush(self) -> None:
        control, self._control = self._control, []
        for frames in control:
            self.socket.send_multipart(frames, copy=False)
        while self._results:
            batch, self._results = self._results[:MAX_ITEMS], self._results[MAX_ITEMS:]
            self.socket.send_multipart(protocol.encode_result(batch), copy=False)

    def _say_hello(self) -> None:
        self._control.append(
            protocol.encode_hello(Role.WORKER, os.getpid(), self.config.concurrency)
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
            self._control.append(protocol.encode_heartbeat())
            self._wake_sender.set()
