"""Task objects, as the HTTP API shows them (docs/http.md), made without unpickling anything.

A call made through the gateway is a JSON call: its result is JSON and its error a text
summary. A background task enqueued from Python (pickled) can be looked up too: its state and
times are shown, its pickled result never is (``"result_encoding": "pickle"``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from squall.client.background import TaskInfo
from squall.client.future import Future
from squall.client.stream import Stream
from squall.protocol import FailureCode

#: the states in which a task has its outcome
ENDED = frozenset(("succeeded", "failed", "cancelled"))


def outcome_fields(future: Future[Any]) -> dict[str, Any]:
    """``state`` and ``result`` or ``error`` of a finished JSON call's future."""
    if future.cancelled():
        return {"state": "cancelled"}
    summary = future.error_summary()
    if summary is not None:
        error = {"type": summary.type, "message": summary.message, "traceback": summary.traceback}
        state = "cancelled" if summary.code is FailureCode.CANCELLED else "failed"
        return {"state": state, "error": error}
    error_raised = future.exception()
    if error_raised is not None:  # (a local error: the result could not be decoded)
        error = {"type": type(error_raised).__name__, "message": str(error_raised)}
        return {"state": "failed", "error": {**error, "traceback": ""}}
    return {"state": "succeeded", "result": future.result()}


def from_info(info: TaskInfo, future: Future[Any] | None = None) -> dict[str, Any]:
    """The task object of a kept task, from the router's record and, once it ended, its
    outcome (``future``: attached to it, with JSON decoding, for a JSON call)."""
    task: dict[str, Any] = {
        "id": info.id,
        "function": info.function,
        "state": info.state,
        "attempts": info.attempts,
        "submitted": info.submitted,
        "started": info.started,
        "finished": info.finished,
    }
    if info.reason:
        task["reason"] = info.reason
    if info.state not in ENDED:
        return task
    fields: dict[str, Any] = {}
    if future is not None and future.done():
        # Only a JSON call's result is read: a pickled one would be unpickled by reading it.
        fields = outcome_fields(future) if info.json else _error_only(future)
    if info.state == "succeeded" and "result" in fields:
        task["result"] = fields["result"]
    elif info.state == "failed":
        task["error"] = fields.get("error") or {
            "type": info.error_type or "",
            "message": info.error_message or "",
            "traceback": "",
        }
    if not info.json:
        task["result_encoding"] = "pickle"  # called from Python: not shown here
    return task


def _error_only(future: Future[Any]) -> dict[str, Any]:
    summary = future.error_summary()
    if summary is None:
        return {}
    return {
        "error": {"type": summary.type, "message": summary.message, "traceback": summary.traceback}
    }


class LocalStream:
    """A generator call started by this gateway (``"stream": true``): its values, kept as
    they come for every reader of ``/events``, and how it ended."""

    def __init__(self, task_id: str, function: str, stream: Stream[Any]) -> None:
        self.id = task_id
        self.function = function
        self.stream = stream
        self.values: list[Any] = []
        self.error: dict[str, str] | None = None
        self.state = "running"
        self.submitted = time.time()
        self.finished: float | None = None
        self.changed = asyncio.Event()

    async def pump(self) -> None:
        """Read the stream to its end (run as a task of the loop)."""
        try:
            async for value in self.stream:
                self.values.append(value)
                self._changed()
            self.state = "succeeded"
        except asyncio.CancelledError:
            self.state = "cancelled"
            raise
        except Exception as exc:
            self.state = "failed"
            self.error = {
                "type": getattr(exc, "type_name", type(exc).__name__),
                "message": getattr(exc, "remote_message", str(exc)),
                "traceback": getattr(exc, "remote_traceback", ""),
            }
        finally:
            self.finished = time.time()
            self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def task(self) -> dict[str, Any]:
        task: dict[str, Any] = {
            "id": self.id,
            "function": self.function,
            "state": self.state,
            "attempts": 1,
            "submitted": self.submitted,
            "started": self.submitted,
            "finished": self.finished,
        }
        if self.state == "succeeded":
            task["result"] = len(self.values)
        if self.error is not None:
            task["error"] = self.error
        return task
