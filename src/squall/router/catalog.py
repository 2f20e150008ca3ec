"""Functions known by name: published to the router by value, or served by workers.

A client publishes a function by value (``ex.publish("reports.daily", fn)``): the router keeps
its cloudpickled body under that name, with a version number that each publish raises, in its
store (on disk with ``--data``), and never unpickles it. A call by name then runs the version
published when it starts, on any worker serving its queue: the worker fetches the body by hash
as it does any other. Names that workers serve (``squall worker --import``) need nothing here:
the scheduler sends their calls only to those workers. A published name takes precedence over
workers serving the same name (publishing is how a name is changed without a restart).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from squall.protocol import function_hash, valid_function_name
from squall.router.background import DEFAULT_RESULT_TTL
from squall.router.model import Limits, Published
from squall.router.periodic import Periodic
from squall.router.store import Store, StoredFunction

#: the QUERY ops this layer answers
CATALOG_OPS = frozenset(("publish", "unpublish", "functions"))
#: most functions the router keeps published
MAX_PUBLISHED = 10_000


class Catalog(Periodic):
    """Background tasks and schedules, plus the functions published by value."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits | None = None,
        store: Store | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock, limits=limits, store=store, result_ttl=result_ttl, wall=wall)
        for stored in self.store.functions():
            self.published[stored.name] = Published(
                stored.name, stored.version, stored.fn_hash, stored.body, stored.published_at
            )

    def catalog_op(self, query: dict[str, Any], frames: list[Any]) -> Any:
        """``{"op": "publish", "name": ...}`` with the body frame; ``unpublish`` with a
        ``name``; ``functions`` lists every name known (published or served)."""
        op = query["op"]
        if op == "functions":
            return self.describe_functions()
        name = query.get("name")
        if not isinstance(name, str) or not valid_function_name(name):
            return {"error": f"{name!r} is not a function name (letters, digits, _ - . :)"}
        if op == "unpublish":
            done = self.published.pop(name, None) is not None
            if done:
                self.store.delete_function(name)
            return {"name": name, "done": done}
        return self.publish(name, frames)

    def publish(self, name: str, frames: list[Any]) -> dict[str, Any]:
        """Keep ``frames[0]`` (a cloudpickled function) as the new version of ``name``."""
        if len(frames) != 1:
            return {"error": "publishing takes the function's body, one frame"}
        body = bytes(frames[0])
        if not body or len(body) > self.limits.body_size:
            return {"error": f"a function's body has 1 to {self.limits.body_size} bytes"}
        known = self.published.get(name)
        if known is None and len(self.published) >= MAX_PUBLISHED:
            return {"error": f"the router keeps {MAX_PUBLISHED} published functions already"}
        fn_hash = function_hash(body)
        version = known.version + 1 if known is not None else 1
        published = Published(name, version, fn_hash, body, self.wall())
        self.published[name] = published
        self.store.put_function(
            StoredFunction(name, version, fn_hash, body, published.published_at)
        )
        return {"name": name, "version": version}

    def describe_functions(self) -> list[dict[str, Any]]:
        """Every function name the router knows, sorted: its published version (0: none),
        when it was published, the workers serving it (how many, and their pids), its calls
        waiting and running."""
        described = []
        serving: dict[str, list[int]] = {}
        for worker in self.workers.values():
            for name in worker.functions:
                serving.setdefault(name, []).append(worker.pid)
        for name, figures in sorted(self.function_stats().items()):
            published = self.published.get(name)
            described.append(
                {
                    "name": name,
                    "version": figures["version"],
                    "published_at": published.published_at if published is not None else None,
                    "workers": figures["workers"],
                    "served_by": sorted(serving.get(name, [])),
                    "queued": figures["queued"],
                    "running": figures["running"],
                }
            )
        return described
