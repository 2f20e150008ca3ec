"""``ex.schedule``: periodic tasks the router fires, with no beat process to run.

A schedule is registered in the router with the function's body and the call's arguments
pickled once, here: the router keeps both (on disk with ``--data``), so the registering client
may exit. Each firing is a background task with an id derived from (name, fire time), which
``attach`` and ``task_info`` take like any other. The spec is checked here before anything is
sent, so a bad cron expression or time zone fails at the call, in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from squall import options as task_options
from squall import serialization
from squall.client.background import function_name
from squall.errors import ProtocolError
from squall.router.timetable import ScheduleError, ScheduleSpec


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as the router holds it: ``spec`` as text (``cron */5 * * * * (UTC)``,
    ``every 30 s``), the next and last fire times (Unix seconds; ``next_fire`` None while
    paused), the id of the last firing's task (for ``attach`` and ``task_info``)."""

    name: str
    spec: str
    function: str
    next_fire: float | None
    last_fire: float | None
    last_id: str | None
    paused: bool
    catchup: str
    overlap: str


class ScheduleMethods:
    """``schedule``, ``schedules``, ``unschedule``, ``pause_schedule`` and
    ``resume_schedule`` of ``squall.Executor``."""

    _ask_router: Callable[..., Any]

    def schedule(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        catchup: str = "latest",
        overlap: str = "allow",
        max_catchup: int = 100,
        **kwargs: Any,
    ) -> ScheduleInfo:
        """Register (or replace) the periodic schedule ``name``: ``fn(*args, **kwargs)`` as a
        background task at every tick of ``cron`` (5 fields, in time zone ``tz``, DST
        handled) or ``every`` seconds.

        ``catchup`` says what ticks missed while the router was down become: ``"skip"``
        (none), ``"latest"`` (one run for all of them, the default), ``"all"`` (each, at most
        ``max_catchup``). ``overlap="skip"`` fires nothing while the previous firing is
        unfinished. squall's ``timeout``, ``retries``, ``retry_on`` and ``backoff`` keywords
        apply to each firing.

        Raises:
            ValueError: a bad spec (``squall.router.timetable.ScheduleError``), at this call.
            SerializationError: ``fn`` or an argument cannot be pickled.
        """
        spec = ScheduleSpec(name, cron, every, tz, catchup, overlap, max_catchup)
        options = task_options.to_send(task_options.from_kwargs(kwargs))
        _, body = serialization.dumps_function(fn)
        frames = serialization.dumps_call(args, kwargs, options)
        query = {"op": "schedule", "spec": spec.to_json(), "function": function_name(fn)}
        answer = self._ask_router(query, [body, *frames])
        if isinstance(answer, dict) and "error" in answer:
            raise ScheduleError(f"the router refused schedule {name!r}: {answer['error']}")
        return _info(answer)

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule the router holds, by name."""
        answer = self._ask_router({"op": "schedules"})
        if not isinstance(answer, list):
            raise ProtocolError("the router's list of schedules cannot be read")
        return [_info(entry) for entry in answer]

    def unschedule(self, name: str) -> bool:
        """Remove schedule ``name`` (its firings already made stay); False if unknown."""
        return self._named("unschedule", name)

    def pause_schedule(self, name: str) -> bool:
        """Stop firing ``name`` until resumed; False if unknown."""
        return self._named("pause", name)

    def resume_schedule(self, name: str) -> bool:
        """Fire ``name`` again from its next tick (ticks passed while paused are skipped);
        False if unknown."""
        return self._named("resume", name)

    def _named(self, op: str, name: str) -> bool:
        answer = self._ask_router({"op": op, "name": name})
        if not isinstance(answer, dict) or "done" not in answer:
            raise ProtocolError(f"the router's answer to {op} cannot be read")
        return bool(answer["done"])


def _info(answer: Any) -> ScheduleInfo:
    try:
        return ScheduleInfo(**answer)
    except TypeError as exc:
        raise ProtocolError(f"the router's schedule cannot be read: {exc}") from None
