"""Webhook deliveries: the outcome of a call made with ``callback_url``, POSTed and signed.

Each delivery is recorded by the router with its task (``squall.router.callbacks``) before the
call is answered, and dropped there only once a receiver answered 2xx: a gateway that restarts
finds the pending ones and delivers them (at least once; the payload's ``id`` de-duplicates).
Failures are retried with exponential backoff, 1 s doubling up to an hour apart, for 24 hours.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from squall import functions
from squall.client.aio import AsyncExecutor
from squall.errors import SquallError, TaskNotFound
from squall.http import tasks, tokens
from squall.log import get_logger

log = get_logger(__name__)

#: for how long a delivery is retried, from the call, seconds
GIVE_UP_AFTER = 24 * 3600
FIRST_RETRY = 1.0
MAX_RETRY = 3600.0
#: how long a receiver has to answer, seconds
ANSWER_TIMEOUT = 10.0


class Deliveries:
    """The webhooks this gateway delivers, each a task of the event loop."""

    def __init__(self, executor: AsyncExecutor, secret: str) -> None:
        self.executor = executor
        self.secret = secret
        self._running: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def add(self, task_id: str, url: str) -> None:
        """Record a delivery with the router (before the call is answered), then start it."""
        answer = await self.executor.ask_router({"op": "callback", "id": task_id, "url": url})
        if "error" in answer:
            raise SquallError(f"the router refused the callback: {answer['error']}")
        self._start(task_id, url, time.time())

    async def resume(self) -> None:
        """Deliver what the router says is pending (after this or another gateway stopped)."""
        pending = await self.executor.ask_router({"op": "callbacks"})
        for entry in pending:
            self._start(entry["id"], entry["url"], float(entry["created"]))
        if pending:
            log.info("resuming webhook deliveries", pending=len(pending))

    def _start(self, task_id: str, url: str, created: float) -> None:
        if task_id not in self._running:
            task = asyncio.get_running_loop().create_task(self._deliver(task_id, url, created))
            self._running[task_id] = task
            task.add_done_callback(lambda _: self._running.pop(task_id, None))

    async def _deliver(self, task_id: str, url: str, created: float) -> None:
        try:
            body = json.dumps(await self._outcome(task_id)).encode()
        except TaskNotFound:  # its outcome expired: nothing left to deliver
            await self._done(task_id)
            return
        pause = FIRST_RETRY
        while True:
            if await self._post(task_id, url, body):
                await self._done(task_id)
                return
            if time.time() + pause > created + GIVE_UP_AFTER:
                log.warning("webhook given up after 24 h", task=task_id, url=url)
                await self._done(task_id)
                return
            await asyncio.sleep(pause)
            pause = min(MAX_RETRY, pause * 2)

    async def _outcome(self, task_id: str) -> dict[str, Any]:
        """The task object once the task ended (waits as long as it runs)."""
        info = await self.executor.task_info(task_id)
        future = None
        if info.json:
            future = self.executor.attach(task_id)
            future.loads = functions.loads_json
            await asyncio.wait([asyncio.wrap_future(future)])
            info = await self.executor.task_info(task_id)
        while info.state not in tasks.ENDED:  # a pickled task: follow the router's record
            await asyncio.sleep(0.5)
            info = await self.executor.task_info(task_id)
        return tasks.from_info(info, future)

    async def _post(self, task_id: str, url: str, body: bytes) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT)
            )
        headers = {
            "Content-Type": "application/json",
            "Squall-Task-Id": task_id,
            "Squall-Signature": tokens.sign(self.secret, body),
        }
        try:
            async with self._session.post(url, data=body, headers=headers) as answer:
                if 200 <= answer.status < 300:
                    return True
                log.info("webhook refused; retrying", task=task_id, status=answer.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.info("webhook not answered; retrying", task=task_id, error=repr(exc)[:200])
        return False

    async def _done(self, task_id: str) -> None:
        try:
            await self.executor.ask_router({"op": "callback_done", "id": task_id})
        except SquallError as exc:  # the router is away: the next gateway delivers it again
            log.warning("could not mark webhook delivered", task=task_id, error=str(exc))

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
