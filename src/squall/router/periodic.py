"""Periodic schedules held by the router: celery beat without a second process to run.

:class:`Periodic` adds to :class:`~squall.router.background.Background` the schedules clients
register (``ex.schedule``). A schedule keeps the task each firing makes (the function's hash
and the pickled call, opaque here; the body is in the store), so the client that registered
it may exit. The :class:`~squall.router.timetable.Timetable` decides which ticks are due; each
firing becomes a background task whose id is derived from (schedule name, fire time). The
firing and the schedule's moved ``next_fire`` are committed together, and an id the store
knows is never made a second task, so a router killed and started again never fires one tick
twice, and ticks it missed while down follow the schedule's ``catchup``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from squall import ids
from squall.protocol import Kind, SubmitItem, function_hash
from squall.router.background import DEFAULT_RESULT_TTL, Background, frame_bytes
from squall.router.model import Limits
from squall.router.store import KeptTask, Store, StoredSchedule
from squall.router.timetable import Schedule, ScheduleError, ScheduleSpec, Timetable

#: a tick older than this when the router gets to it counts as missed (the router stalled);
#: so does any tick due before the router started (it was down)
GRACE = 5.0

#: schedules the router holds at most (each costs a heap entry and its payload)
MAX_SCHEDULES = 10_000


class Periodic(Background):
    """Background tasks, plus the periodic schedules that make them."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits | None = None,
        store: Store | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock, limits=limits, store=store, result_ttl=result_ttl, wall=wall)
        self.timetable = Timetable(grace=GRACE)
        self.started_at = wall()
        for stored in self.store.schedules():
            try:
                spec = ScheduleSpec.from_json(json.loads(stored.spec))
            except (ScheduleError, ValueError):
                continue  # (written by this code, so checked already: never expected)
            self.timetable.restore(
                Schedule(
                    spec, stored, stored.next_fire, stored.last_fire, stored.last_id, stored.paused
                )
            )

    # -- what clients ask -------------------------------------------------------------------

    def register(self, client: bytes, query: dict[str, Any], frames: list[Any]) -> dict[str, Any]:
        """Add or replace a schedule: ``query["spec"]`` (a ScheduleSpec as JSON), its
        function's ``name``; ``frames``: the function's body, then the call's payload."""
        try:
            spec = ScheduleSpec.from_json(query["spec"])
            if len(frames) < 1:
                raise ValueError("a schedule needs its function's body")
            body, payload = bytes(frames[0]), frame_bytes(frames[1:])
            if spec.name not in self.timetable and len(self.timetable) >= MAX_SCHEDULES:
                raise ValueError(f"the router holds {MAX_SCHEDULES} schedules already")
            if len(body) > self.limits.body_size:
                raise ValueError(
                    f"the function's body is larger than {self.limits.body_size} bytes"
                )
        except (KeyError, TypeError, ValueError) as exc:
            return {"error": str(exc)[:300]}
        fn_hash = function_hash(body)
        self.store.put_body(fn_hash, body)
        known = self.clients.get(client)
        group = known.group if known is not None else ""
        stored = StoredSchedule(
            spec.name,
            json.dumps(spec.to_json()),
            fn_hash,
            payload,
            str(query.get("function", "")),
            group,
            0.0,
        )
        schedule = self.timetable.add(spec, stored, self.wall())
        self._save(schedule)
        return self.describe(schedule)

    def unregister(self, name: str) -> bool:
        if not self.timetable.remove(name):
            return False
        self.store.delete_schedule(name)
        return True

    def set_paused(self, name: str, paused: bool) -> bool:
        done = self.timetable.pause(name) if paused else self.timetable.resume(name, self.wall())
        schedule = self.timetable.get(name)
        if done and schedule is not None:
            self._save(schedule)
        return done

    def describe(self, schedule: Schedule) -> dict[str, Any]:
        spec = schedule.spec
        return {
            "name": spec.name,
            "spec": spec.describe(),
            "function": schedule.payload.function,
            "next_fire": None
            if schedule.paused or math.isinf(schedule.next_fire)
            else schedule.next_fire,
            "last_fire": schedule.last_fire,
            "last_id": ids.to_text(schedule.last_id) if schedule.last_id else None,
            "paused": schedule.paused,
            "catchup": spec.catchup,
            "overlap": spec.overlap,
        }

    # -- firing -----------------------------------------------------------------------------

    def fire_due(self) -> int:
        """Turn every due tick into a background task; return how many were made."""
        due = self.timetable.next_due()
        now = self.wall()
        if due is None or due > now:
            return 0
        records: list[KeptTask] = []
        touched: dict[str, Schedule] = {}
        # Ticks due before this router started were missed (it was down): their catch-up
        # policy applies, however recent they are.
        self.timetable.grace = min(GRACE, max(0.0, now - self.started_at))
        firings = self.timetable.due(now, self._unfinished)
        known = self.store.get_many([f.task_id for f in firings if f.task_id not in self.kept])
        for firing in firings:
            touched[firing.name] = firing.schedule
            if firing.task_id in self.kept or firing.task_id in known:
                continue  # fired before a restart already: never a second task
            stored: StoredSchedule = firing.schedule.payload
            item = SubmitItem(
                0,
                stored.fn_hash,
                Kind.CALL,
                0,
                (),
                list(stored.frames),
                firing.task_id,
                0.0,
                stored.function,
            )
            _, record = self._keep(item, stored.group, now)
            records.append(record)
        for schedule in self.timetable:
            if schedule.payload.next_fire != schedule.next_fire:
                touched[schedule.spec.name] = schedule
        for schedule in touched.values():
            self._save(schedule)
        if records:
            self.store.add(records)
            self.counters["enqueued"] += len(records)
            self.counters["submitted"] += len(records)
            self.counters["schedule_firings"] += len(records)
        return len(records)

    def next_due(self) -> float:
        due = super().next_due()
        at = self.timetable.next_due()
        if at is not None:
            due = min(due, self.clock() + max(0.0, at - self.wall()))
        return due

    def dispatch(self) -> Any:
        if self.timetable:
            self.fire_due()
        return super().dispatch()

    def _unfinished(self, task_id: bytes) -> bool:
        return task_id in self.kept

    def _save(self, schedule: Schedule) -> None:
        stored: StoredSchedule = schedule.payload
        stored.next_fire = schedule.next_fire
        stored.last_fire = schedule.last_fire
        stored.last_id = schedule.last_id
        stored.paused = schedule.paused
        self.store.put_schedule(stored)
