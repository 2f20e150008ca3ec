"""The web dashboard (``GET /``) and the JSON endpoints it reads, which scripts may use too.

The page is a single-page app in plain JavaScript under ``static/`` (no build step): it reads
``/v1/status``, ``/v1/tasks``, ``/v1/tasks/{id}/record``, ``/v1/workers`` and
``/v1/schedules``, acts through the POST/DELETE endpoints, and moves with ``/v1/stream``,
Server-Sent Events of the router's events plus a ``status`` event every second, so charts
and tables change without polling. Everything here is the router's JSON answers passed on:
nothing is unpickled.

Auth is the API's: with ``--tokens`` a request carries ``Authorization: Bearer`` or the
cookie ``/v1/session`` sets from a token typed into the login page (a browser cannot put a
header on a page load or an EventSource). The cookie is HttpOnly and SameSite=Strict, and a
POST or DELETE it authenticates must also carry ``X-Squall-Request: 1``, a header no
cross-site form can send and no cross-site script can add without a CORS preflight this
server never grants.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

# A module, not names: app.py imports this module at its top, so names of app are looked up
# when a request is served, never while the two modules are being imported.
from squall.errors import StartupError, Unavailable
from squall.http import app as api
from squall.log import get_logger

if TYPE_CHECKING:
    from squall.http import tokens

log = get_logger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: the cookie that carries a dashboard user's token
COOKIE = "squall_token"
#: the header every state-changing request authenticated by the cookie must carry
CSRF_HEADER = "X-Squall-Request"
#: paths served without a token: what the login page needs, and nothing from the router
#: (``/`` checks the token itself, to send a browser without one to the login page)
PUBLIC = frozenset(("/v1/health", "/", "/login"))
#: the pages' Content-Security-Policy: scripts and styles from this server only (uPlot sets
#: element styles from script, hence 'unsafe-inline' for styles alone)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
#: seconds between the ``status`` events of ``/v1/stream``
STATUS_EVERY = 1.0
#: seconds one status answer is shared by every open stream and ``/v1/status`` caller
STATUS_SHARED = 0.5
#: router events one stream holds for a slow reader before it drops the oldest
STREAM_HELD = 10_000
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def is_public(request: web.Request) -> bool:
    """Whether ``request`` needs no token (the login page, its files, logging in or out,
    health)."""
    path = request.path
    if path == "/v1/session":
        return request.method != "GET"
    return path in PUBLIC or path.startswith("/static/")


def check_token(request: web.Request, token_set: tokens.Tokens) -> None:
    """Let ``request`` through if its bearer header or its cookie holds a known token.

    Raises:
        ApiError: 401 without a known token; 403 for a POST or DELETE that only the cookie
            authenticates and that lacks ``X-Squall-Request: 1`` (cross-site request forgery).
    """
    if token_set.name_of(request.headers.get("Authorization")) is not None:
        return
    cookie = request.cookies.get(COOKIE)
    if not cookie or token_set.name_of(f"Bearer {cookie}") is None:
        raise api.ApiError(401, "unauthorized", "a valid bearer token is required")
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise api.ApiError(
            403, "csrf", f"a request authenticated by cookie needs the header {CSRF_HEADER}: 1"
        )


def is_router_id(task_id: str) -> bool:
    """Whether ``task_id`` is an ordinary task's id (the router's number, 16 hex digits)."""
    return len(task_id) == 16 and all(c in "0123456789abcdef" for c in task_id)


async def cancel_any(gateway: api.Gateway, task_id: str) -> dict[str, Any]:
    """Cancel a task by its 16-hex id (one submitted by any client), as an operator would.

    Raises:
        ApiError: 404 if the router knows no such task.
    """
    executor = gateway.executor
    (answer,) = await executor.ask_router({"op": "cancel", "ids": [task_id]})
    cancelled = bool(answer.get("cancelled"))
    if not cancelled:
        try:
            await executor.inspect(task_id)
        except ValueError as exc:
            raise api.ApiError(404, "task_not_found", str(exc)) from None
    return {"id": task_id, "cancelled": cancelled}


class Dashboard:
    """The page, its login, and the ``/v1`` endpoints it reads, over ``gateway``."""

    def __init__(self, gateway: api.Gateway) -> None:
        self.gateway = gateway
        self.executor = gateway.executor
        self._status: dict[str, Any] | None = None
        self._status_at = -1e9
        self._status_lock = asyncio.Lock()
        self._closing = asyncio.Event()

    # -- the page -----------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        token_set = self.gateway.tokens
        if token_set is not None:
            try:
                check_token(request, token_set)
            except api.ApiError:
                raise web.HTTPFound("/login") from None
        return _page("index.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        if self.gateway.tokens is None:  # loopback without tokens: nothing to log into
            raise web.HTTPFound("/")
        return _page("login.html")

    async def start_session(self, request: web.Request) -> web.StreamResponse:
        """``{"token": ...}`` in, the cookie out: the login page's POST."""
        if request.headers.get(CSRF_HEADER) != "1":
            raise api.ApiError(403, "csrf", f"this request needs the header {CSRF_HEADER}: 1")
        token_set = self.gateway.tokens
        if token_set is None:
            return web.json_response({"name": None, "required": False})
        body = await self.gateway._body(request)
        token = body.get("token")
        token = token.strip() if isinstance(token, str) else ""
        name = token_set.name_of(f"Bearer {token}") if token else None
        if name is None:
            raise api.ApiError(401, "unauthorized", "that token is not one this gateway accepts")
        response = web.json_response({"name": name, "required": True})
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        log.info("dashboard session started", token=name)
        return response

    async def session(self, request: web.Request) -> web.StreamResponse:
        """Whether this gateway asks for a token (the middleware let this request in)."""
        return web.json_response({"required": self.gateway.tokens is not None})

    async def end_session(self, request: web.Request) -> web.StreamResponse:
        response = web.json_response({"ended": True})
        response.del_cookie(COOKIE, path="/")
        return response

    # -- reading ------------------------------------------------------------------------------

    async def _shared_status(self) -> dict[str, Any]:
        """The router's status, asked at most every :data:`STATUS_SHARED` seconds however
        many streams and pages want it."""
        async with self._status_lock:
            if self._status is None or time.monotonic() - self._status_at > STATUS_SHARED:
                self._status = await self.executor.status()
                self._status_at = time.monotonic()
            return self._status

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._shared_status())

    async def tasks(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        states = [s for raw in query.getall("state", []) for s in raw.split(",") if s]
        try:
            found = await self.executor.tasks(
                state=states or None,
                name=query.get("name") or None,
                queue=query.get("queue") or None,
                since=_number(query, "since"),
                until=_number(query, "until"),
                limit=int(_number(query, "limit") or 50),
                offset=int(_number(query, "offset") or 0),
            )
        except ValueError as exc:
            raise api.ApiError(400, "bad_request", str(exc)) from None
        return web.json_response(found)

    async def record(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._record(request.match_info["id"]))

    async def _record(self, task_id: str) -> dict[str, Any]:
        try:
            return await self.executor.inspect(task_id)
        except ValueError as exc:
            raise api.ApiError(404, "task_not_found", str(exc)) from None

    async def workers(self, request: web.Request) -> web.StreamResponse:
        status = await self._shared_status()
        return web.json_response(
            {"workers": status["workers"], "gone_workers": status["gone_workers"]}
        )

    async def schedules(self, request: web.Request) -> web.StreamResponse:
        answer = await self.executor.ask_router({"op": "schedules"})
        if not isinstance(answer, list):
            raise api.ApiError(502, "bad_answer", "the router's list of schedules is unreadable")
        return web.json_response({"schedules": answer})

    # -- acting -------------------------------------------------------------------------------

    async def retry(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        record = await self._record(task_id)
        if not record.get("background"):
            raise api.ApiError(
                409,
                "not_retryable",
                "only a background task can be retried (its arguments are kept by the router)",
            )
        if record.get("state") != "failed":
            raise api.ApiError(
                409,
                "not_retryable",
                f"task {task_id} is {record.get('state')}: only a failed one can be retried",
            )
        try:
            new_id = await self.executor.retry(task_id)
        except ValueError as exc:
            raise api.ApiError(409, "not_retryable", str(exc)) from None
        log.info("task retried from the gateway", task=task_id, new=new_id)
        return web.json_response({"id": new_id, "retry_of": task_id})

    async def drain(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["pid"]
        if not raw.isdigit():
            raise api.ApiError(400, "bad_request", f"a worker's pid is a number, not {raw!r}")
        try:
            answer = await self.executor.drain_worker(int(raw))
        except ValueError as exc:
            raise api.ApiError(404, "worker_not_found", str(exc)) from None
        self._status = None  # the next status shows it draining
        log.info("worker drained from the gateway", pid=int(raw))
        return web.json_response(answer)

    async def pause(self, request: web.Request) -> web.StreamResponse:
        return await self._schedule_op(request, "pause")

    async def resume(self, request: web.Request) -> web.StreamResponse:
        return await self._schedule_op(request, "resume")

    async def _schedule_op(self, request: web.Request, op: str) -> web.StreamResponse:
        name = request.match_info["name"]
        answer = await self.executor.ask_router({"op": op, "name": name})
        if not isinstance(answer, dict) or "error" in answer:
            message = answer.get("error") if isinstance(answer, dict) else "unreadable answer"
            raise api.ApiError(400, "bad_request", f"{op} {name!r}: {message}")
        if not answer.get("done"):
            raise api.ApiError(404, "schedule_not_found", f"no schedule named {name!r}")
        return web.json_response({"name": name, "paused": op == "pause"})

    # -- live ---------------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: each router event as it happens (``event:`` its type, as
        ``task.failed``; ``?types=`` keeps only those named), and ``status`` every second."""
        raw_types = request.query.get("types")
        types = [t for t in raw_types.split(",") if t] if raw_types else None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        held: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        events = self.executor.events(types)
        pump = asyncio.get_running_loop().create_task(_pump(events, held))
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            await self._stream_until_closed(response, held, pump)
        except ConnectionResetError:
            pass  # the reader left
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        return response

    async def _stream_until_closed(
        self,
        response: web.StreamResponse,
        held: asyncio.Queue[dict[str, Any]],
        pump: asyncio.Task[None],
    ) -> None:
        next_status = time.monotonic()
        while not self._closing.is_set() and not pump.done():
            if time.monotonic() >= next_status:
                try:
                    await response.write(_sse("status", await self._shared_status()))
                except (Unavailable, StartupError) as exc:  # said, and asked again later
                    await response.write(_sse("error", {"code": "no_router", "message": str(exc)}))
                next_status = time.monotonic() + STATUS_EVERY
            try:
                first = await asyncio.wait_for(held.get(), max(0.0, next_status - time.monotonic()))
            except asyncio.TimeoutError:
                continue
            batch = [first]
            while not held.empty() and len(batch) < STREAM_HELD:
                batch.append(held.get_nowait())
            lost = held.qsize() - STREAM_HELD
            for _ in range(max(0, lost)):  # a reader this far behind loses the oldest
                held.get_nowait()
            chunks = [_sse(event["type"], event) for event in batch]
            if lost > 0:
                chunks.append(_sse("events.lost", {"type": "events.lost", "count": lost}))
            await response.write(b"".join(chunks))

    async def _stop_streams(self, app: web.Application) -> None:
        self._closing.set()


async def _pump(events: AsyncIterator[dict[str, Any]], held: asyncio.Queue[dict[str, Any]]) -> None:
    """Move router events into ``held`` (a queue can be waited on with a timeout; the events'
    async iterator cannot: cancelling its ``__anext__`` would end the subscription)."""
    async for event in events:
        held.put_nowait(event)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(
        STATIC / name, headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP}
    )


def _number(query: Any, field: str) -> float | None:
    raw = query.get(field)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise api.ApiError(400, "bad_request", f"{field} is a number, not {raw!r}") from None


def add_routes(app: web.Application, gateway: api.Gateway) -> None:
    """Serve the dashboard at ``/`` and its endpoints under ``/v1`` (docs/http.md)."""
    board = Dashboard(gateway)
    app.on_shutdown.append(board._stop_streams)
    app.router.add_get("/", board.index)
    app.router.add_get("/login", board.login)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/v1/session", board.session)
    app.router.add_post("/v1/session", board.start_session)
    app.router.add_delete("/v1/session", board.end_session)
    app.router.add_get("/v1/status", board.status)
    app.router.add_get("/v1/tasks", board.tasks)
    app.router.add_get("/v1/tasks/{id}/record", board.record)
    app.router.add_post("/v1/tasks/{id}/retry", board.retry)
    app.router.add_get("/v1/workers", board.workers)
    app.router.add_post("/v1/workers/{pid}/drain", board.drain)
    app.router.add_get("/v1/schedules", board.schedules)
    app.router.add_post("/v1/schedules/{name}/pause", board.pause)
    app.router.add_post("/v1/schedules/{name}/resume", board.resume)
    app.router.add_get("/v1/stream", board.stream)
