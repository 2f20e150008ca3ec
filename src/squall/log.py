"""structlog setup shared by every squall process: key-value events, JSON on request.

Library code only calls :func:`get_logger`. Processes squall starts itself (router, worker node,
worker process) call :func:`configure` once at boot and write their own lines to stderr. In any
other process (an application using the client) squall's events go to the standard
:mod:`logging` module, as records of the ``squall.*`` loggers, so the application's logging
configuration decides where they go and at what level; with no configuration at all, Python
prints warnings and errors to stderr.

structlog itself is imported on the first event that is not dropped: a worker process of the
embedded default (level ``warning``) may never log, and structlog with what it imports (asyncio
among them) is some 3 MB of its idle RSS. Below the level, a method is a no-op without it, as
structlog's own filtering logger is.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

LEVEL_ENV = "SQUALL_LOG_LEVEL"
JSON_ENV = "SQUALL_LOG_JSON"
#: the level names ``--log-level`` and ``SQUALL_LOG_LEVEL`` accept
LEVELS = ("debug", "info", "warning", "error", "critical")

#: whether :func:`configure` ran in this process (squall's own processes only)
_configured = False
#: the minimum level :func:`configure` set (an int), below which events are dropped unseen
_min_level: Any = logging.INFO
#: structlog's configuration, until the first event that is not dropped applies it
_pending: dict[str, Any] | None = None
#: structlog's method names by level, as its filtering logger has them (``err`` is no level)
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def configure(*, json: bool | None = None, level: str | None = None, process: str = "") -> None:
    """Send structlog events to stderr, readable on a terminal or as JSON lines.

    Args:
        json: one JSON object per line; default from ``SQUALL_LOG_JSON``.
        level: minimum level name; default from ``SQUALL_LOG_LEVEL``, else ``info``.
        process: a tag bound to every event (``router``, ``worker``...), so the lines of
            several processes sharing a terminal can be told apart.
    """
    global _configured, _min_level, _pending
    if json is None:
        json = os.environ.get(JSON_ENV, "") not in ("", "0")
    level_name = (level or os.environ.get(LEVEL_ENV) or "info").upper()
    # Everything read from the process now, as when structlog was configured here: the pid
    # (a task's fork() child that logs first is another pid), whether stderr is a terminal.
    _min_level = getattr(logging, level_name, logging.INFO)
    _pending = {
        "json": json,
        "level": _min_level,
        "colors": sys.stderr.isatty(),
        "tags": {"process": process, "pid": os.getpid()} if process else {},
    }
    _configured = True


#: callables whose fields go on every event of this process (see :func:`add_context`)
_context_hooks: list[Callable[[], Mapping[str, Any]]] = []


def add_context(hook: Callable[[], Mapping[str, Any]]) -> None:
    """Put ``hook()``'s fields on every event from now on: a worker process adds the id
    of the task running in the greenlet that logs (``squall.tracing.log_context``)."""
    _context_hooks.append(hook)


def _structlog() -> Any:
    """structlog, configured as :func:`configure` asked, on the first call after it."""
    global _pending
    import structlog

    pending = _pending
    if pending is not None:
        _apply(structlog, **pending)
        # Cleared only now: another thread's first event meanwhile applies the same
        # configuration again rather than reach structlog unconfigured.
        if _pending is pending:
            _pending = None
    return structlog


def _apply(structlog: Any, json: bool, level: Any, colors: bool, tags: dict[str, Any]) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=colors)
    )

    def add_process_tags(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        # Static tags rather than contextvars: gevent starts each greenlet with an empty context.
        for key, value in tags.items():
            event.setdefault(key, value)
        for context in _context_hooks:  # the task a worker's greenlet runs, say
            for key, value in context().items():
                event.setdefault(key, value)
        return event

    structlog.configure(
        processors=[
            add_process_tags,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_line_writer,
        cache_logger_on_first_use=True,
    )


def _drop(*_: Any, **__: Any) -> None:
    """An event below the configured level."""


class LineWriter:
    """A structlog logger that writes each event as one complete line in one ``write(2)``.

    The processes of a worker node share one stderr. ``print`` writes the text and its
    newline in two calls, so another process's line can land in between and glue two lines
    together (and break JSON). One write of a whole line is never split on a file, nor on a
    pipe up to ``PIPE_BUF`` (4 KiB) bytes.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        # None: sys.stderr as it is at each write, so a redirected stderr is followed.
        self._stream = stream

    def msg(self, message: str) -> None:
        """Write ``message`` and its newline at once; a failing stderr loses the line, never
        the process."""
        stream = self._stream or sys.stderr
        line = message + "\n"
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a stream with no fd (captured)
            stream.write(line)
            stream.flush()
            return
        data = line.encode("utf-8", "backslashreplace")
        try:
            stream.flush()  # text someone printed earlier goes first
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            pass

    log = debug = info = warn = warning = err = error = critical = exception = msg
    fatal = failure = msg


def _line_writer(*_: Any) -> LineWriter:
    """structlog's logger factory (it passes ``get_logger``'s positional arguments)."""
    return LineWriter()


def _field(key: str, value: Any) -> str:
    """``key=value`` as a person reads it: plain words bare, anything else as its repr."""
    if isinstance(value, str) and value and not any(c in value for c in " ='\"\n"):
        return f"{key}={value}"
    if isinstance(value, bool | int | float):
        return f"{key}={value}"
    return f"{key}={value!r}"


def _to_record(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Turn a structlog event into the keyword arguments of a ``logging`` call: the message
    reads ``event key=value ...``, and the fields are also on the record as ``record.squall``
    for handlers that want them structured."""
    event.pop("module", None)  # the logger's name says it
    exc_info = event.pop("exc_info", None)
    stack_info = bool(event.pop("stack_info", False))
    message = str(event.pop("event", ""))
    fields = dict(event)
    text = " ".join([message, *(_field(k, v) for k, v in fields.items())])
    return {
        "msg": text,
        "exc_info": exc_info,
        "stack_info": stack_info,
        "extra": {"squall": fields},
    }


class _Logger:
    """A logger that writes where the process wants squall's events.

    In squall's own processes (after :func:`configure`) that is structlog's pipeline to
    stderr. Everywhere else it is the ``logging`` module: an application configures logging
    once for everything it uses, and squall must not print past that configuration.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._stdlib: Any = None

    def __getattr__(self, method: str) -> Any:
        if _configured:
            level = _METHOD_LEVELS.get(method)
            if level is not None and isinstance(_min_level, int) and level < _min_level:
                return _drop
            return getattr(_structlog().get_logger(module=self._name), method)
        if self._stdlib is None:
            structlog = _structlog()
            self._stdlib = structlog.wrap_logger(
                logging.getLogger(self._name),
                processors=[structlog.stdlib.filter_by_level, _to_record],
                wrapper_class=structlog.stdlib.BoundLogger,
            )
        return getattr(self._stdlib, method)


def get_logger(name: str) -> Any:
    """A logger tagged with the module that logs (see :class:`_Logger` for where it writes)."""
    return _Logger(name)
