"""The gateway's HTTP API (docs/http.md), served by aiohttp over a :class:`squall.AsyncExecutor`.

Every call is a JSON call by name, enqueued as a background task so that its id means the same
to every gateway and survives this one (``GET /v1/tasks/{id}`` asks the router). With
``?wait=S`` the handler awaits the task's future for up to S seconds: no polling. Streams
(``"stream": true``) are the exception: a generator's values are held here, by the gateway
that started it. Nothing is ever unpickled: outcomes are JSON, errors text summaries.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from squall import functions, ids, tracing
from squall.client.aio import AsyncExecutor
from squall.client.background import await_held, raise_refusal
from squall.errors import (
    ConfigError,
    QueueFull,
    Refused,
    SerializationError,
    StartupError,
    TaskNotFound,
    TaskTooLarge,
    Unavailable,
)
from squall.http import dashboard, openapi, tasks, tokens
from squall.http.webhooks import Deliveries
from squall.log import get_logger
from squall.options import TaskOptions

log = get_logger(__name__)

#: the longest ``?wait`` a request may ask for, seconds
MAX_WAIT = 60.0
#: how long the list of known function names is trusted before it is asked again, seconds
CATALOG_TTL = 1.0
#: the call options a request may give (docs/http.md)
CALL_OPTIONS = ("queue", "priority", "delay", "expires", "timeout", "retries", "key")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: HTTP status, stable code, one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class Gateway:
    """The API's handlers, around one router connection."""

    def __init__(
        self,
        executor: AsyncExecutor,
        token_set: tokens.Tokens | None = None,
        webhook_secret: str | None = None,
        hook_secret: str | None = None,
    ) -> None:
        self.executor = executor
        self.tokens = token_set
        self.hook_secret = hook_secret
        self.deliveries = Deliveries(executor, webhook_secret) if webhook_secret else None
        self.streams: dict[str, tasks.LocalStream] = {}
        self._names: set[str] = set()
        self._names_at = -math.inf

    # -- plumbing -----------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Token check, then the handler, with every failure a JSON error (docs/http.md)."""
        try:
            if request.method not in _SAFE_METHODS and not _same_origin(request):
                raise ApiError(
                    403,
                    "cross_origin",
                    f"a browser page from {request.headers['Origin']!r} may not change anything "
                    "here (only pages this gateway serves may)",
                )
            if self.tokens is not None and request.path not in ("/v1/health",):
                if not dashboard.is_public(request):  # the bearer header, or the cookie
                    dashboard.check_token(request, self.tokens)
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(413, "too_large", exc.text or "the request body is too large")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
            return error_response(exc.status, code, exc.reason)
        except TaskNotFound as exc:
            return error_response(404, "task_not_found", str(exc))
        except Refused as exc:  # with --auth: the gateway's key is not an operator's
            return error_response(403, "not_operator", str(exc))
        except QueueFull as exc:
            return error_response(429, "queue_full", str(exc))
        except TaskTooLarge as exc:
            return error_response(413, "too_large", str(exc))
        except (Unavailable, StartupError) as exc:
            return error_response(503, "no_router", str(exc))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body is a JSON object")
        return body

    async def _known(self, name: str) -> bool:
        """Whether a worker serves ``name`` or it is published (the list is cached a second,
        and asked again at once for a name not in it)."""
        if name in self._names and time.monotonic() - self._names_at < CATALOG_TTL:
            return True
        listed = await self.executor.functions()
        self._names = {f.name for f in listed if f.version or f.workers}
        self._names_at = time.monotonic()
        return name in self._names

    # -- calls --------------------------------------------------------------------------------

    async def call(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not _valid_name(name):
            raise ApiError(400, "bad_request", f"{name!r} is not a function name")
        body = await self._body(request)
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ApiError(400, "bad_request", '"args" is a list and "kwargs" an object')
        options = _options(body.get("options"))
        traceparent = request.headers.get("traceparent")
        if traceparent is not None:  # W3C trace context: the task joins the caller's trace
            try:
                options = options.merged(traceparent=tracing.check(traceparent.strip()))
            except ValueError as exc:
                raise ApiError(400, "bad_request", str(exc)) from None
        callback = body.get("callback_url")
        if callback is not None and not (
            isinstance(callback, str) and callback.startswith(("http://", "https://"))
        ):
            raise ApiError(400, "bad_request", '"callback_url" is an http:// or https:// URL')
        if not await self._known(name):
            raise ApiError(
                404, "unknown_function", f"no worker serves {name!r} and none is published"
            )
        wait = _wait(request)
        if body.get("stream"):
            return await self._start_stream(name, args, kwargs, options)
        if callback is not None and self.deliveries is None:
            raise ApiError(400, "bad_request", "this gateway has no webhook secret")
        try:
            future = self.executor.executor.enqueue_json(name, args, kwargs, options)
        except SerializationError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        task_id = future.id
        location = {"Location": f"/v1/tasks/{task_id}"}
        if callback is not None:  # recorded with the router only once it holds the task
            assert self.deliveries is not None
            await await_held([future])
            await self.deliveries.add(task_id, callback)
        if wait:  # an outcome implies the router held it: no separate wait for its word
            await settled(future, wait)
            if future.done():
                raise_refusal([future])  # refused (queue full...) rather than held
                task = {"id": task_id, "function": name, **tasks.outcome_fields(future)}
                return web.json_response(task, headers=location)
        await await_held([future])  # a 202 says the router holds it (with --data: on disk)
        state = "scheduled" if options.delay or options.at else "queued"
        return web.json_response({"id": task_id, "state": state}, status=202, headers=location)

    async def _enqueue(
        self, name: str, args: list[Any], kwargs: dict[str, Any], options: TaskOptions
    ) -> Any:
        future = self.executor.executor.enqueue_json(name, args, kwargs, options)
        await await_held([future])  # the router holds it (with --data: on disk)
        return future

    async def _start_stream(
        self, name: str, args: list[Any], kwargs: dict[str, Any], options: TaskOptions
    ) -> web.StreamResponse:
        try:
            stream = self.executor.executor.stream_json(name, args, kwargs, options)
        except SerializationError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        local = tasks.LocalStream(ids.to_text(ids.new_id()), name, stream)
        self.streams[local.id] = local
        pump = asyncio.get_running_loop().create_task(local.pump())
        pump.add_done_callback(lambda _: self._forget_later(local.id))
        location = {"Location": f"/v1/tasks/{local.id}"}
        return web.json_response({"id": local.id, "state": "running"}, status=202, headers=location)

    def _forget_later(self, task_id: str) -> None:
        """A finished stream stays readable for a while, then goes (the gateway keeps no
        unbounded history)."""
        asyncio.get_running_loop().call_later(600, self.streams.pop, task_id, None)

    async def hook(self, request: web.Request) -> web.StreamResponse:
        """A third party's webhook starts ``name`` with the request's JSON body."""
        name = request.match_info["name"]
        raw = await request.read()
        if self.hook_secret is not None:
            header = request.headers.get("Squall-Signature", "")
            if not tokens.verify(self.hook_secret, header, raw):
                raise ApiError(403, "bad_signature", "the Squall-Signature does not verify")
        try:
            event = json.loads(raw) if raw else None
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
        if not _valid_name(name) or not await self._known(name):
            raise ApiError(
                404, "unknown_function", f"no worker serves {name!r} and none is published"
            )
        future = await self._enqueue(name, [event], {}, TaskOptions())
        return web.json_response({"id": future.id, "state": "queued"}, status=202)

    # -- tasks --------------------------------------------------------------------------------

    async def get_task(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        local = self.streams.get(task_id)
        if local is not None:
            return web.json_response(local.task())
        return web.json_response(await self._task(task_id, _wait(request)))

    async def _task(self, task_id: str, wait: float) -> dict[str, Any]:
        """The task object of a kept task, once it ended or ``wait`` seconds passed."""
        _check_id(task_id)
        info = await self.executor.task_info(task_id)
        if not info.json:  # called from Python: only the router's record (never unpickle)
            deadline = time.monotonic() + wait
            while info.state not in tasks.ENDED and time.monotonic() < deadline:
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                info = await self.executor.task_info(task_id)
            return tasks.from_info(info)
        if info.state not in tasks.ENDED and not wait:
            return tasks.from_info(info)
        future = self.executor.attach(task_id)
        future.loads = functions.loads_json
        await settled(future, wait or MAX_WAIT)
        if info.state not in tasks.ENDED:
            info = await self.executor.task_info(task_id)
        return tasks.from_info(info, future)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: each streamed value, then the task object at its end."""
        task_id = request.match_info["id"]
        local = self.streams.get(task_id)
        if local is None:
            _check_id(task_id)
            await self.executor.task_info(task_id)  # 404 before the stream starts
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if local is not None:
            sent = 0
            while True:
                changed = local.changed
                while sent < len(local.values):
                    await _event(response, "value", local.values[sent])
                    sent += 1
                if local.finished is not None and sent == len(local.values):
                    break
                await changed.wait()
            await _event(response, "end", local.task())
        else:
            task: dict[str, Any] = {}
            while task.get("state") not in tasks.ENDED:
                task = await self._task(task_id, MAX_WAIT)
            await _event(response, "end", task)
        await response.write_eof()
        return response

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        local = self.streams.get(task_id)
        if local is not None:
            running = local.finished is None
            local.stream.close()
            return web.json_response({"id": task_id, "cancelled": running})
        if dashboard.is_router_id(task_id):  # a task tied to its client: by router number
            return web.json_response(await dashboard.cancel_any(self, task_id))
        _check_id(task_id)
        cancelled = await self.executor.cancel_by_id(task_id)
        return web.json_response({"id": task_id, "cancelled": cancelled})

    # -- the rest -----------------------------------------------------------------------------

    async def list_functions(self, request: web.Request) -> web.StreamResponse:
        listed = await self.executor.functions()
        return web.json_response({"functions": [vars(f) for f in listed]})

    async def health(self, request: web.Request) -> web.StreamResponse:
        try:
            stats = await asyncio.wait_for(self.executor.stats(), 2.0)
        except (asyncio.TimeoutError, Unavailable, StartupError):
            return error_response(503, "no_router", "the router does not answer")
        return web.json_response({"status": "ok", "workers": stats.get("workers", 0)})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(openapi.DOCUMENT)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """Prometheus metrics of the router, asked at each scrape (docs/http.md, "Metrics").

        A router that does not answer gives a 200 with ``squall_router_up 0``, not an error:
        the scrape still succeeds, and an alert on that one figure says what is wrong.
        """
        try:
            from squall import metrics
        except ConfigError:
            raise ApiError(
                500, "no_metrics", "/metrics needs prometheus_client: pip install 'squall[http]'"
            ) from None
        try:
            answer = await asyncio.wait_for(self.executor.metrics(), metrics.ROUTER_TIMEOUT)
        except (asyncio.TimeoutError, Unavailable, StartupError):
            answer = None
        body, content_type = metrics.exposition(answer)
        return web.Response(body=body, headers={"Content-Type": content_type})


def build_app(gateway: Gateway, max_body: int = 16 << 20) -> web.Application:
    """The aiohttp application serving ``gateway`` under ``/v1``."""
    app = web.Application(middlewares=[gateway.middleware], client_max_size=max_body)
    app.router.add_post("/v1/functions/{name}/calls", gateway.call)
    app.router.add_get("/v1/functions", gateway.list_functions)
    app.router.add_get("/v1/tasks/{id}", gateway.get_task)
    app.router.add_get("/v1/tasks/{id}/events", gateway.events)
    app.router.add_delete("/v1/tasks/{id}", gateway.cancel)
    app.router.add_post("/v1/hooks/{name}", gateway.hook)
    app.router.add_get("/v1/health", gateway.health)
    app.router.add_get("/v1/openapi.json", gateway.openapi)
    dashboard.add_routes(app, gateway)
    app.router.add_get("/metrics", gateway.metrics)
    return app


async def settled(future: Any, timeout: float) -> None:
    """Wait up to ``timeout`` s for a JSON call's future to end, however it ends.

    Not ``asyncio.wrap_future`` with ``wait_for``: the executor resolves its futures in this
    loop's thread, so a bare loop future and one timer do (a third of the cost per call).
    """
    if future.done():
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    owner = threading.get_ident()

    def wake(_: object = None) -> None:
        if threading.get_ident() != owner:  # resolved in another thread after all
            loop.call_soon_threadsafe(wake)
        elif not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()


def _valid_name(name: str) -> bool:
    try:
        functions.check_name(name)
    except ValueError:
        return False
    return True


def _check_id(task_id: str) -> None:
    try:
        ids.from_text(task_id)
    except ValueError:
        raise ApiError(404, "task_not_found", f"{task_id!r} is not a task id") from None


def _wait(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"wait is a number of seconds, not {raw!r}") from None
    if not 0 <= wait <= MAX_WAIT:
        raise ApiError(400, "bad_request", f"wait is 0 to {MAX_WAIT:g} seconds")
    return wait


#: methods that change nothing, which a page of another site may send
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def _same_origin(request: web.Request) -> bool:
    """Whether a request is not a browser's cross-site one: no ``Origin`` header (curl, the
    clients), or this gateway's own. A gateway without tokens on loopback must not be driven
    by whatever web page its operator happens to open."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urllib.parse.urlsplit(origin).netloc == request.host


def _options(raw: Any) -> TaskOptions:
    if raw is None:
        return TaskOptions()
    if not isinstance(raw, dict) or not set(raw) <= set(CALL_OPTIONS):
        raise ApiError(400, "bad_request", f'"options" takes {", ".join(CALL_OPTIONS)}')
    try:
        return TaskOptions(**raw)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "bad_request", f"bad options: {exc}") from None


async def _event(response: web.StreamResponse, event: str, data: Any) -> None:
    await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
