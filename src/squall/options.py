"""Per-task options (``submit(..., timeout=, retries=, retry_on=, backoff=)``).

They travel inside the task's pickled payload: only the worker needs them, and the router stays
out of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: keyword arguments ``submit`` and ``stream`` keep for themselves
RESERVED = ("timeout", "retries", "retry_on", "backoff")


@dataclass(frozen=True)
class TaskOptions:
    """How one task runs on its worker.

    Args:
        timeout: seconds the task may run; past it, it is interrupted and fails with
            ``squall.TaskTimeout``.
        retries: times to run the task again when it raises one of ``retry_on``.
        retry_on: exception types worth a retry; application errors are retried only when
            asked, and then only these (default: any ``Exception``).
        backoff: first pause between attempts in seconds; it doubles each attempt, with
            jitter, up to ``max_backoff``.
    """

    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.1
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if self.backoff < 0:
            raise ValueError("backoff must be 0 or more")

    def pause(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): exponential, capped,
        with "full jitter" so that retrying tasks do not stampede together."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


def from_kwargs(kwargs: dict[str, object]) -> TaskOptions | None:
    """Take squall's own keywords out of ``kwargs`` (in place); None when there are none."""
    found = {name: kwargs.pop(name) for name in RESERVED if name in kwargs}
    if not found:
        return None
    retry_on = found.get("retry_on")
    if retry_on is not None and not isinstance(retry_on, tuple):
        found["retry_on"] = (retry_on,)
    return TaskOptions(**found)  # type: ignore[arg-type]
