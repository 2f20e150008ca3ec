"""Periodic schedules: which ticks are due, decided from the time passed in.

This is the router's socket-free core for schedules ("celery beat done right"). It takes the
time as an argument and returns decisions; the router turns a :class:`Firing` into a task and
keeps :class:`Schedule` rows in its store. Nothing here sleeps, polls or touches a socket.

Developer notes:

* A heap of ``(next_fire, name, token)`` with lazy deletion: replacing, pausing or removing a
  schedule only forgets its token, and the stale entry is dropped when it reaches the top.
  :meth:`Timetable.due` therefore costs O(log n) per firing and nothing per idle schedule.
* A task id is derived from the schedule's name and the tick (:func:`firing_id`), so a router
  restarted in the middle of a tick makes the same id again and its dedupe drops the copy.
* Catching up never enumerates the whole outage: ``every`` schedules are arithmetic on their
  grid, cron ones are walked backwards from ``now`` only as far as the catch-up policy needs.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = ["Firing", "Schedule", "ScheduleError", "ScheduleSpec", "Timetable", "firing_id"]

CATCHUP = ("skip", "latest", "all")
OVERLAP = ("allow", "skip")
NAME_MAX = 200
_CRON_FIELDS = 5
_MS_MAX = (1 << 48) - 1


class ScheduleError(ValueError):
    """A schedule that cannot be run as given; the message names the bad field."""


def _zone(tz: str) -> ZoneInfo:
    """The zone named ``tz`` (ZoneInfo caches by name, so this is a dict lookup when warm)."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"tz: unknown time zone {tz!r:.60} (an IANA name such as 'Europe/Berlin')"
        ) from None


@dataclass(frozen=True)
class ScheduleSpec:
    """What a schedule is: when it fires and what to do about ticks it could not fire in time.

    Args:
        name: the schedule's key, 1 to 200 characters; a second spec of the same name replaces it.
        cron: a 5-field cron expression (minute hour day-of-month month day-of-week),
            evaluated in ``tz``, DST included: a local time skipped by the clock change fires at
            the first minute after it, a repeated one fires once.
        every: the period in seconds (at least 1), on a grid anchored where the schedule
            was added. Exactly one of ``cron`` and ``every``.
        tz: IANA time zone name for ``cron``.
        catchup: ticks the router missed (down or stalled longer than the grace):
            ``"skip"`` fires none, ``"latest"`` fires one for the whole run, ``"all"`` fires
            each, the newest ``max_catchup`` of them.
        overlap: ``"skip"`` does not fire while the previous firing's task is unfinished.
        max_catchup: at most this many missed ticks fire with ``catchup="all"``.

    Raises:
        ScheduleError: a field is invalid, named in the message.
    """

    name: str
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    catchup: str = "latest"
    overlap: str = "allow"
    max_catchup: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= NAME_MAX:
            raise ScheduleError(
                f"name: a schedule's name is a string of 1 to {NAME_MAX} characters"
            )
        if (self.cron is None) == (self.every is None):
            raise ScheduleError("cron/every: give exactly one of cron and every")
        if not isinstance(self.tz, str):
            raise ScheduleError("tz: the time zone is a string such as 'Europe/Berlin'")
        zone = _zone(self.tz)
        if self.cron is not None:
            if not isinstance(self.cron, str):
                raise ScheduleError("cron: the expression is a string such as '*/5 * * * *'")
            cron = " ".join(self.cron.split())
            count = len(cron.split())
            if count != _CRON_FIELDS:
                raise ScheduleError(
                    f"cron: {self.cron!r:.80} has {count} fields, not 5 "
                    "(minute hour day-of-month month day-of-week)"
                )
            try:
                CronSim(cron, datetime.fromtimestamp(0, zone))
            except CronSimError as exc:
                raise ScheduleError(f"cron: {self.cron!r:.80} is invalid: {exc}") from None
            object.__setattr__(self, "cron", cron)  # one spelling, for describe() and equality
        if self.every is not None:
            every = self.every
            if isinstance(every, bool) or not isinstance(every, (int, float)):
                raise ScheduleError("every: the period is a number of seconds")
            if not math.isfinite(every) or every < 1:
                raise ScheduleError(f"every: the period must be at least 1 second, not {every!r}")
            object.__setattr__(self, "every", float(every))
        if self.catchup not in CATCHUP:
            raise ScheduleError(
                f"catchup: must be one of {', '.join(CATCHUP)}, not {self.catchup!r:.40}"
            )
        if self.overlap not in OVERLAP:
            raise ScheduleError(
                f"overlap: must be one of {', '.join(OVERLAP)}, not {self.overlap!r:.40}"
            )
        if (
            isinstance(self.max_catchup, bool)
            or not isinstance(self.max_catchup, int)
            or self.max_catchup < 1
        ):
            raise ScheduleError(
                f"max_catchup: must be a whole number of at least 1, not {self.max_catchup!r:.40}"
            )

    def to_json(self) -> dict[str, Any]:
        """Every field, as JSON types (for the router's store and its replies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleSpec:
        """The spec of :meth:`to_json`'s form; missing fields take their defaults.

        Raises:
            ScheduleError: ``data`` has unknown keys or an invalid field.
        """
        if not isinstance(data, dict):
            raise ScheduleError("a schedule spec is a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ScheduleError(f"unknown schedule field(s): {', '.join(unknown)}"[:200])
        if "name" not in data:
            raise ScheduleError("name: a schedule needs a name")
        return cls(**data)

    def describe(self) -> str:
        """A short human form: ``cron */5 * * * * (Europe/Berlin)`` or ``every 30 s``."""
        if self.cron is not None:
            return f"cron {self.cron} ({self.tz})"
        assert self.every is not None
        every = int(self.every) if self.every.is_integer() else self.every
        return f"every {every} s"

    def next_after(self, t: float) -> float:
        """The first fire time strictly after epoch ``t``.

        For ``every`` that is ``t + every``: the spec has no anchor, the :class:`Timetable`
        keeps each schedule on its own grid. ``math.inf`` if a cron expression never fires
        again (cronsim gives up after 50 years without a match).
        """
        if self.every is not None:
            return t + self.every
        return next(self._cron_after(t), math.inf)

    def _cron_after(self, t: float) -> Iterator[float]:
        """Cron fire times strictly after ``t``, increasing.

        cronsim starts at the whole second of ``t`` and yields later times; the explicit check
        keeps "strictly after" true around a DST fall-back, where cronsim walks local
        wall-clock time and may return the first pass of an hour ``t`` is in the second pass of.
        """
        assert self.cron is not None
        zone = _zone(self.tz)
        last = t
        for dt in CronSim(self.cron, datetime.fromtimestamp(t, zone)):
            ts = dt.timestamp()
            if ts > last:
                last = ts
                yield ts

    def _cron_back(self, t: float) -> Iterator[float]:
        """Cron fire times at or before ``t``, newest first (only to find where to start)."""
        assert self.cron is not None
        # a fraction past the whole second makes cronsim's reverse walk include that second
        start = datetime.fromtimestamp(math.floor(t) + 0.5, _zone(self.tz))
        for dt in CronSim(self.cron, start, reverse=True):
            ts = dt.timestamp()
            if ts <= t:
                yield ts


def firing_id(name: str, fire_time: float) -> bytes:
    """The task id of a schedule's tick: 16 bytes in ULID layout, the same every time.

    48 bits of the tick's Unix milliseconds (so it sorts and reads like any squall id), then
    the first 80 bits of ``sha256(name + "\\0" + str(ms))``. A router restarted mid-tick makes
    the same id again, and its dedupe by id keeps the tick a single task.

    Raises:
        ValueError: ``fire_time`` is before 1970 or past the year 10889.
    """
    ms = round(fire_time * 1000)
    if not 0 <= ms <= _MS_MAX:
        raise ValueError(f"fire time {fire_time!r} does not fit a 48-bit millisecond count")
    digest = hashlib.sha256(f"{name}\0{ms}".encode()).digest()
    return ms.to_bytes(6, "big") + digest[:10]


@dataclass
class Schedule:
    """One schedule's state. The :class:`Timetable` owns it: read it, change it through there."""

    spec: ScheduleSpec
    payload: Any  # opaque here: the router keeps the task's frames
    next_fire: float  # the next fire time not yet fired
    last_fire: float | None = None
    last_id: bytes = b""  # firing_id of the last firing
    paused: bool = False


class Firing(NamedTuple):
    """A tick to turn into a task, with the id that task must have."""

    name: str
    fire_time: float
    task_id: bytes
    schedule: Schedule


class Timetable:
    """All schedules; a heap of ``(next_fire, name)`` with lazy deletion.

    Args:
        grace: a fire time more than this many seconds old at :meth:`due` time counts as
            missed (the router was down or stalled) and is subject to the spec's ``catchup``.
    """

    def __init__(self, grace: float = 60.0) -> None:
        if not grace >= 0:
            raise ValueError(f"grace must be at least 0 seconds, not {grace!r}")
        self.grace = grace
        self._schedules: dict[str, Schedule] = {}
        #: (next_fire, name, token); an entry counts only while _tokens[name] == token
        self._heap: list[tuple[float, str, int]] = []
        self._tokens: dict[str, int] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._schedules)

    def __contains__(self, name: object) -> bool:
        return name in self._schedules

    def __iter__(self) -> Iterator[Schedule]:
        """The schedules, sorted by name."""
        return iter([self._schedules[name] for name in sorted(self._schedules)])

    def get(self, name: str) -> Schedule | None:
        return self._schedules.get(name)

    def add(self, spec: ScheduleSpec, payload: Any, now: float) -> Schedule:
        """Add a schedule, or replace the one of the same name; it first fires after ``now``.

        A replaced schedule's ``last_fire``, ``last_id`` and ``paused`` carry over: a task the
        old definition started still counts for ``overlap="skip"``, and an operator's pause
        survives a client declaring its schedules again.
        """
        old = self._schedules.get(spec.name)
        schedule = Schedule(spec, payload, spec.next_after(now))
        if old is not None:
            schedule.last_fire, schedule.last_id = old.last_fire, old.last_id
            schedule.paused = old.paused
        self._put(schedule)
        return schedule

    def restore(self, schedule: Schedule) -> None:
        """Take back a schedule read from the store (a router restart), as it was.

        Its ``next_fire`` is kept, so a tick fired before the restart (``next_fire`` already
        moved past it) is not fired again, and an ``every`` schedule stays on its grid.
        """
        self._put(schedule)

    def remove(self, name: str) -> bool:
        """Forget a schedule; False if there was none of that name."""
        if self._schedules.pop(name, None) is None:
            return False
        del self._tokens[name]
        return True

    def pause(self, name: str) -> bool:
        """Stop firing a schedule until :meth:`resume`; False if there is none of that name."""
        schedule = self._schedules.get(name)
        if schedule is None:
            return False
        schedule.paused = True
        self._push(schedule)  # forgets the live entry, pushes none
        return True

    def resume(self, name: str, now: float) -> bool:
        """Fire a paused schedule again from its first tick after ``now``.

        Ticks that passed while it was paused are skipped, not caught up: a pause means "don't
        run". False if there is no schedule of that name; resuming an unpaused one changes
        nothing.
        """
        schedule = self._schedules.get(name)
        if schedule is None:
            return False
        if schedule.paused:
            schedule.paused = False
            schedule.next_fire = max(schedule.next_fire, self._after(schedule, now))
            self._push(schedule)
        return True

    def next_due(self) -> float | None:
        """The earliest ``next_fire`` of the unpaused schedules: the router sleeps until then."""
        heap = self._heap
        while heap and self._tokens.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def due(self, now: float, unfinished: Callable[[bytes], bool]) -> list[Firing]:
        """The ticks to fire at ``now``, in fire-time order; each schedule moves past ``now``.

        A tick at most ``grace`` seconds old is on time and fires. Older ones were missed and
        follow the spec's ``catchup``; with ``"latest"`` the newest missed one fires only if no
        tick is on time, so a run of missed ticks becomes one run.

        With ``overlap="skip"`` nothing fires while ``unfinished(last_id)`` is true, and at most
        one tick fires per call (several at once would overlap each other); ``next_fire``
        advances past ``now`` all the same.

        Args:
            now: the time, epoch seconds.
            unfinished: whether the task of an id (a previous firing) is still queued or running.
        """
        firings: list[Firing] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, name, token = heapq.heappop(heap)
            if self._tokens.get(name) != token:
                continue  # replaced, paused or removed since this entry was pushed
            schedule = self._schedules[name]
            times = self._to_fire(schedule, now)
            spec = schedule.spec
            if times and spec.overlap == "skip":
                if schedule.last_id and unfinished(schedule.last_id):
                    times = []
                else:
                    times = times[-1:]
            for t in times:
                firings.append(Firing(name, t, firing_id(name, t), schedule))
            if times:
                schedule.last_fire = times[-1]
                schedule.last_id = firings[-1].task_id
            schedule.next_fire = self._after(schedule, now)
            self._push(schedule)
        firings.sort(key=lambda f: (f.fire_time, f.name))
        return firings

    # -- internals ---------------------------------------------------------------------------

    def _put(self, schedule: Schedule) -> None:
        self._schedules[schedule.spec.name] = schedule
        self._push(schedule)

    def _push(self, schedule: Schedule) -> None:
        """Make the schedule's heap entry the one that counts (none while paused)."""
        name = schedule.spec.name
        token = next(self._counter)
        self._tokens[name] = token
        if not schedule.paused and schedule.next_fire != math.inf:
            heapq.heappush(self._heap, (schedule.next_fire, name, token))
        if len(self._heap) > 2 * len(self._schedules) + 64:
            self._compact()

    def _compact(self) -> None:
        """Drop the stale entries (many replacements or pauses), keeping the live ones."""
        self._heap = [e for e in self._heap if self._tokens.get(e[1]) == e[2]]
        heapq.heapify(self._heap)

    def _after(self, schedule: Schedule, now: float) -> float:
        """The schedule's first fire time after ``now``; ``every`` stays on its grid."""
        spec = schedule.spec
        if spec.every is None:
            return spec.next_after(now)
        every, anchor = spec.every, schedule.next_fire
        if anchor > now:
            return anchor
        k = math.floor((now - anchor) / every) + 1
        while anchor + k * every <= now:  # float rounding, either way
            k += 1
        while k > 1 and anchor + (k - 1) * every > now:
            k -= 1
        return anchor + k * every

    def _to_fire(self, schedule: Schedule, now: float) -> list[float]:
        """The schedule's ticks to fire at ``now``: on-time ones, and missed ones per catchup."""
        spec = schedule.spec
        if spec.every is not None:
            return self._to_fire_every(schedule, spec.every, now)
        return self._to_fire_cron(schedule, now)

    def _to_fire_every(self, schedule: Schedule, every: float, now: float) -> list[float]:
        """Arithmetic on the grid ``next_fire + i * every``: no list of the outage is built."""
        spec, anchor = schedule.spec, schedule.next_fire
        count = round((self._after(schedule, now) - anchor) / every)  # ticks <= now
        cutoff = now - self.grace
        first_on_time = max(0, math.ceil((cutoff - anchor) / every))
        while first_on_time > 0 and anchor + (first_on_time - 1) * every >= cutoff:
            first_on_time -= 1
        while first_on_time < count and anchor + first_on_time * every < cutoff:
            first_on_time += 1
        first_on_time = min(first_on_time, count)
        missed = first_on_time  # indices 0 .. missed-1
        if spec.catchup == "all":
            start = max(0, missed - spec.max_catchup)
        elif spec.catchup == "latest" and missed and first_on_time == count:
            start = missed - 1
        else:
            start = first_on_time
        return [anchor + i * every for i in range(start, count)]

    def _to_fire_cron(self, schedule: Schedule, now: float) -> list[float]:
        """Walk back from ``now`` only as far as needed, then list those ticks going forward.

        The backward walk finds where to start without enumerating the outage; the forward
        walk from there gives the same instants (and so the same ids) as on-time firing does,
        DST transitions included.
        """
        spec, anchor = schedule.spec, schedule.next_fire
        cutoff = now - self.grace
        wanted = {"skip": 0, "latest": 1, "all": spec.max_catchup}[spec.catchup]
        back: list[float] = []  # newest first, all after the anchor
        from_anchor = True
        for t in spec._cron_back(now):
            if t <= anchor:
                break
            if t < cutoff:
                if wanted == 0:
                    from_anchor = False
                    break
                wanted -= 1
            back.append(t)
        # else: no earlier tick for 50 years, so from the anchor as well
        if from_anchor:
            start = anchor
        elif back:
            start = back[-1]
        else:
            return []  # the newest tick is already missed and none of the missed are wanted
        ticks = [start]
        for t in spec._cron_after(start):
            if t > now:
                break
            if len(ticks) > len(back) + 8:  # the walks disagree wildly: trust the backward one
                ticks = [anchor] if from_anchor else []
                ticks += reversed(back)
                break
            ticks.append(t)
        on_time = [t for t in ticks if t >= cutoff]
        missed = [t for t in ticks if t < cutoff]
        if spec.catchup == "all":
            missed = missed[-spec.max_catchup :]
        elif spec.catchup == "latest" and not on_time:
            missed = missed[-1:]
        else:
            missed = []
        return missed + on_time
