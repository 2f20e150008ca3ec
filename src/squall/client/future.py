"""``squall.Future``: a real ``concurrent.futures.Future`` that asyncio can also await."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Generator
from typing import Any, TypeVar

from squall import serialization
from squall.errors import SerializationError
from squall.protocol import Frame, Status

T = TypeVar("T")


class _Undecoded:
    """A result's frames, as they arrived; unpickled on first access."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames


class Future(concurrent.futures.Future[T]):
    """The outcome of one task.

    Being a ``concurrent.futures.Future``, it works with ``concurrent.futures.wait`` and
    ``as_completed``; ``await fut`` works too, without blocking the event loop.

    A result is unpickled on first ``result()``, in the caller's thread: the client's I/O thread
    only routes frames, and a result nobody reads (one only passed on to another task) is never
    unpickled here at all.
    """

    task_id: int = 0
    owner: object = None  # the client core that submitted it

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()

    def result(self, timeout: float | None = None) -> T:
        value = super().result(timeout)
        if isinstance(value, _Undecoded):
            return self._decode(value)  # type: ignore[no-any-return]
        return value

    def _decode(self, raw: _Undecoded) -> Any:
        with _decode_lock:
            if self._result is not raw:  # another thread decoded it meanwhile
                return self.result()
            try:
                self._result = serialization.loads(raw.frames)
            except Exception as exc:
                self._result = None
                self._exception = SerializationError(f"the result could not be unpickled: {exc!r}")
                raise self._exception from exc
        return self._result

    def _squall_outcome(self, status: int, frames: list[Frame]) -> None:
        """Resolve from a RESULT item (called by the client's I/O driver)."""
        try:
            if status == Status.OK:
                self.set_result(_Undecoded(frames))  # type: ignore[arg-type]
            elif status == Status.ERROR:
                self.set_exception(serialization.loads_exception(frames))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the caller meanwhile

    def _squall_fail(self, exc: BaseException) -> None:
        try:
            self.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass

    def __repr__(self) -> str:
        return super().__repr__().replace("<Future", f"<squall.Future task={self.task_id}", 1)


_decode_lock = threading.Lock()
