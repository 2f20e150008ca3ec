"""Webhooks the HTTP gateway owes: kept by the router with their tasks.

A call made through the gateway with a ``callback_url`` is a background task; its delivery is
recorded here (on disk with ``--data``) until a gateway reports it done, so that a gateway that
restarts, or another one, still delivers it: at least once. The router only keeps the records;
it makes no HTTP request itself.
"""

from __future__ import annotations

from typing import Any

from squall import ids
from squall.router.catalog import Catalog
from squall.router.store import StoredCallback

#: the QUERY ops this layer answers
CALLBACK_OPS = frozenset(("callback", "callbacks", "callback_done"))
#: most pending deliveries kept (each a URL and an id)
MAX_CALLBACKS = 1_000_000
#: longest callback URL, in characters
MAX_URL = 2048


class Callbacks(Catalog):
    """Background tasks, schedules, published functions, and pending webhook deliveries."""

    def callback_op(self, query: dict[str, Any]) -> Any:
        """``{"op": "callback", "id": ID, "url": URL}`` records a delivery; ``callbacks``
        lists them (``{"id", "url", "created"}``); ``callback_done`` with an ``id`` drops
        one."""
        op = query["op"]
        if op == "callbacks":
            return [
                {"id": ids.to_text(c.id), "url": c.url, "created": c.created}
                for c in self.store.callbacks()
            ]
        try:
            key = ids.from_text(query["id"])
        except (KeyError, TypeError, ValueError):
            return {"error": "a callback names its task by id"}
        if op == "callback_done":
            self.store.delete_callback(key)
            return {"id": query["id"], "done": True}
        url = query.get("url")
        if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
            return {"error": f"a callback URL has 1 to {MAX_URL} characters"}
        if self.store.get(key) is None:
            return {"error": f"no task {query['id']} is kept"}
        if len(self.store.callbacks()) >= MAX_CALLBACKS:
            return {"error": f"the router keeps {MAX_CALLBACKS} pending callbacks already"}
        self.store.put_callback(StoredCallback(key, url, self.wall()))
        return {"id": query["id"], "done": True}
