"""structlog setup shared by every squall process: key-value events, JSON on request.

Library code only calls :func:`get_logger`; processes squall starts itself (router, worker node,
worker process) call :func:`configure` once at boot. An application that embeds the client keeps
whatever structlog configuration it has.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

LEVEL_ENV = "SQUALL_LOG_LEVEL"
JSON_ENV = "SQUALL_LOG_JSON"


def configure(*, json: bool | None = None, level: str | None = None, process: str = "") -> None:
    """Send structlog events to stderr, readable on a terminal or as JSON lines.

    Args:
        json: one JSON object per line; default from ``SQUALL_LOG_JSON``.
        level: minimum level name; default from ``SQUALL_LOG_LEVEL``, else ``info``.
        process: a tag bound to every event (``router``, ``worker``...), so the lines of
            several processes sharing a terminal can be told apart.
    """
    if json is None:
        json = os.environ.get(JSON_ENV, "") not in ("", "0")
    level_name = (level or os.environ.get(LEVEL_ENV) or "info").upper()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    tags = {"process": process, "pid": os.getpid()} if process else {}

    def add_process_tags(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        # Static tags rather than contextvars: gevent starts each greenlet with an empty context.
        for key, value in tags.items():
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
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class _Logger:
    """A logger that follows the application's structlog configuration, if it has one.

    structlog's unconfigured default prints to stdout, which is the application's output (a
    table, JSON, a pipe): until someone configures structlog, squall's client side logs
    warnings and errors to stderr instead.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        if structlog.is_configured():
            return getattr(structlog.get_logger(module=self._name), method)
        return getattr(_stderr_default().bind(module=self._name), method)


_fallback: Any = None


def _stderr_default() -> Any:
    global _fallback
    if _fallback is None:
        level = (os.environ.get(LEVEL_ENV) or "warning").upper()
        _fallback = structlog.wrap_logger(
            structlog.PrintLogger(file=sys.stderr),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                getattr(logging, level, logging.WARNING)
            ),
        )
    return _fallback


def get_logger(name: str) -> Any:
    """A structlog logger tagged with the module that logs."""
    return _Logger(name)
