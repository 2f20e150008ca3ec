"""``squall.Future``: a real ``concurrent.futures.Future`` that asyncio can also await."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import Any, TypeVar

T = TypeVar("T")


class Future(concurrent.futures.Future[T]):
    """The outcome of one task.

    Being a ``concurrent.futures.Future``, it works with ``concurrent.futures.wait`` and
    ``as_completed``; ``await fut`` works too, without blocking the event loop.
    """

    task_id: int = 0

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return super().__repr__().replace("<Future", f"<squall.Future task={self.task_id}", 1)
