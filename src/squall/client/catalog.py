"""``ex.publish``: functions kept by the router under a name, callable by that name.

Publishing sends the function's cloudpickled body once (a closure too); the router keeps it
under the name (on disk with ``--data``) with a version number, and every call by name from
then on (``ex.submit("reports.daily", ...)``, the HTTP API, another language's client) runs
the version published when the call starts. No worker restarts: workers fetch the body by hash
the first time they run it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from squall import functions, serialization
from squall.errors import ProtocolError, UsageError


@dataclass(frozen=True)
class FunctionInfo:
    """A function name the router knows: its published ``version`` (0: not published, only
    served by workers), when it was published (Unix seconds), how many worker processes serve
    it by import and their pids (``served_by``), and its calls waiting and running now."""

    name: str
    version: int
    published_at: float | None
    workers: int
    queued: int
    running: int
    served_by: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "served_by", tuple(self.served_by))


class CatalogMethods:
    """``publish``, ``unpublish`` and ``functions`` of ``squall.Executor``."""

    _ask_router: Callable[..., Any]

    def publish(self, name: str, fn: Callable[..., Any]) -> int:
        """Keep ``fn`` in the router as the function ``name``; return its version (1 for a
        new name, one more at each publish).

        Raises:
            ValueError: a bad name (1 to 200 letters, digits and ``_ - . :``).
            SerializationError: ``fn`` cannot be pickled.
            UsageError: the router refused it (too big, too many), with its reason.
        """
        functions.check_name(name)
        _, body = serialization.dumps_function(fn)
        answer = self._ask_router({"op": "publish", "name": name}, [body])
        if isinstance(answer, dict) and "error" in answer:
            raise UsageError(f"the router refused to publish {name!r}: {answer['error']}")
        try:
            return int(answer["version"])
        except (TypeError, KeyError, ValueError):
            raise ProtocolError("the router's answer to publish cannot be read") from None

    def unpublish(self, name: str) -> bool:
        """Forget the published function ``name`` (calls by name then go to workers serving
        it, or wait for one); False if it was not published."""
        functions.check_name(name)
        answer = self._ask_router({"op": "unpublish", "name": name})
        if not isinstance(answer, dict) or "done" not in answer:
            raise ProtocolError("the router's answer to unpublish cannot be read")
        return bool(answer["done"])

    def functions(self) -> list[FunctionInfo]:
        """Every function name the router knows, published or served by workers, by name."""
        return functions_of(self._ask_router({"op": "functions"}))


def functions_of(answer: Any) -> list[FunctionInfo]:
    """The router's answer to ``functions``, read."""
    try:
        return [FunctionInfo(**entry) for entry in answer]
    except TypeError as exc:
        raise ProtocolError(f"the router's list of functions cannot be read: {exc}") from None
