"""Global limits per queue: how many tasks may start per period, and run at once.

The router sees every dispatch, so a limit here holds across all workers (Celery's
``rate_limit`` is per worker). The rate is kept as a sliding log of start times: up to
``count`` tasks may start at once (a burst of one period's worth), and never more than
``count`` in any window of ``period`` seconds, which a token bucket (up to twice that across
a window's edge) does not promise. Limited tasks wait in the router, not on workers.

Socket-free: the router's dispatch asks :meth:`Limiter.allowance` and reports starts with
:meth:`Limiter.started`, passing the time; tests pass a fake one.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass, field

#: a start is counted this much longer than its period: what reaches a worker a few ms late
#: must not let the next window's starts overlap it there
SLACK = 0.02

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smh])\s*$")


@dataclass
class QueueLimit:
    """A queue's limits: ``count`` starts per ``period`` seconds, ``concurrency`` running."""

    count: int | None = None
    period: float = 1.0
    concurrency: int | None = None
    starts: collections.deque[float] = field(default_factory=collections.deque)

    def describe(self) -> dict[str, object]:
        rate = None if self.count is None else f"{self.count}/{_period_text(self.period)}"
        return {"rate": rate, "concurrency": self.concurrency}


def parse_rate(text: str) -> tuple[int, float]:
    """``"100/s"``, ``"10/m"``, ``"5/2s"``, ``"1/h"`` as (count, period in seconds).

    Raises:
        ValueError: not such a rate (one line, naming it).
    """
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"rate {text!r} is not N/s, N/m or N/h (e.g. 100/s)")
    count, multiple, unit = int(match[1]), match[2], match[3]
    period = (float(multiple) if multiple else 1.0) * _PERIODS[unit]
    if count < 1 or not period > 0:
        raise ValueError(f"rate {text!r} must allow at least 1 start in a positive period")
    return count, period


def parse_limit(text: str) -> tuple[str, int | None, float, int | None]:
    """A ``--limit`` value: ``QUEUE=100/s``, ``QUEUE=concurrency:4`` or both, comma
    separated: (queue, count, period, concurrency).

    Raises:
        ValueError: a malformed limit, naming what is wrong.
    """
    queue, sep, spec = text.partition("=")
    if not sep or not queue.strip() or not spec.strip():
        raise ValueError(f"limit {text!r} is not QUEUE=RATE or QUEUE=concurrency:N")
    count: int | None = None
    period = 1.0
    concurrency: int | None = None
    for part in spec.split(","):
        name, colon, value = part.strip().partition(":")
        if colon and name == "concurrency":
            concurrency = parse_concurrency(value)
        elif not colon:
            count, period = parse_rate(part)
        else:
            raise ValueError(f"limit {text!r}: {part!r} is neither a rate nor concurrency:N")
    return queue.strip(), count, period, concurrency


def parse_concurrency(value: object) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"concurrency must be a whole number >= 1, not {value!r}") from None
    if number < 1:
        raise ValueError(f"concurrency must be a whole number >= 1, not {value!r}")
    return number


def _period_text(period: float) -> str:
    for unit, seconds in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if period % seconds == 0:
            multiple = int(period // seconds)
            return unit if multiple == 1 else f"{multiple}{unit}"
    return f"{period:g}s"


class Limiter:
    """The limits of every limited queue (a queue without one is not in here)."""

    def __init__(self) -> None:
        self.limits: dict[str, QueueLimit] = {}

    def __contains__(self, queue: str) -> bool:
        return queue in self.limits

    def __bool__(self) -> bool:
        return bool(self.limits)

    def set(
        self, queue: str, count: int | None, period: float = 1.0, concurrency: int | None = None
    ) -> None:
        """Set (or, with neither, lift) a queue's limits; its recent starts still count."""
        if count is None and concurrency is None:
            self.limits.pop(queue, None)
            return
        known = self.limits.get(queue)
        starts = known.starts if known is not None else collections.deque()
        self.limits[queue] = QueueLimit(count, period, concurrency, starts)

    def allowance(self, queue: str, now: float, running: int) -> int:
        """How many tasks of ``queue`` may start now, with ``running`` of them running."""
        limit = self.limits[queue]
        room = math.inf
        if limit.concurrency is not None:
            room = max(0, limit.concurrency - running)
        if limit.count is not None:
            starts = limit.starts
            horizon = now - limit.period - SLACK
            while starts and starts[0] <= horizon:
                starts.popleft()
            room = min(room, max(0, limit.count - len(starts)))
        return int(min(room, 1 << 30))

    def started(self, queue: str, n: int, now: float) -> None:
        limit = self.limits.get(queue)
        if limit is not None and limit.count is not None and n:
            limit.starts.extend([now] * n)

    def next_room(self, queue: str) -> float:
        """When a rate-limited queue may start a task again (inf: not limited by rate)."""
        limit = self.limits.get(queue)
        if limit is None or limit.count is None or len(limit.starts) < limit.count:
            return math.inf
        return limit.starts[0] + limit.period + SLACK
