"""squall: run any Python callable on a fleet of gevent workers behind a ZeroMQ router.

The client API is imported on first use: routers and worker processes import ``squall`` too,
and have no use for the client's modules (a few MB and tens of milliseconds each).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from squall._version import __version__
from squall.errors import (
    ConfigError,
    DependencyFailed,
    ExecutorShutdown,
    ProtocolError,
    QueueFull,
    Refused,
    RemoteTraceback,
    SerializationError,
    SquallError,
    StartupError,
    TaskError,
    TaskExpired,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
    TaskTooLarge,
    Unavailable,
    UnknownDependency,
    UnknownFunction,
    UsageError,
    VersionMismatch,
    WorkerLost,
)

if TYPE_CHECKING:
    from squall.client.aio import AsyncExecutor
    from squall.client.background import TaskInfo
    from squall.client.executor import Executor, ExecutorForked
    from squall.client.future import Future, as_completed
    from squall.client.schedules import ScheduleInfo
    from squall.client.stream import Stream
    from squall.client.view import AsyncExecutorView, ExecutorView
    from squall.functions import function

__all__ = [
    "__version__",
    # client
    "Executor",
    "AsyncExecutor",
    "Future",
    "Stream",
    "as_completed",
    "TaskInfo",
    "ScheduleInfo",
    "ExecutorView",
    "AsyncExecutorView",
    # functions called by name
    "function",
    # errors: the task's own outcome
    "SquallError",
    "TaskError",
    "TaskFailed",
    "TaskTimeout",
    "WorkerLost",
    "DependencyFailed",
    "TaskExpired",
    # errors: capacity or connection, worth retrying
    "Unavailable",
    "QueueFull",
    "StartupError",
    # errors: usage and configuration
    "UsageError",
    "ConfigError",
    "SerializationError",
    "TaskTooLarge",
    "UnknownDependency",
    "UnknownFunction",
    "TaskNotFound",
    "ExecutorShutdown",
    "ExecutorForked",
    # errors: the peer itself
    "Refused",
    "ProtocolError",
    "VersionMismatch",
    "RemoteTraceback",
]

_CLIENT = {
    "Executor": "squall.client.executor",
    "AsyncExecutor": "squall.client.aio",
    "Future": "squall.client.future",
    "Stream": "squall.client.stream",
    "as_completed": "squall.client.future",
    "ExecutorView": "squall.client.view",
    "AsyncExecutorView": "squall.client.view",
    "ExecutorForked": "squall.client.executor",
    "TaskInfo": "squall.client.background",
    "ScheduleInfo": "squall.client.schedules",
    "function": "squall.functions",
}


def __dir__() -> list[str]:
    """The public names, lazy ones included, so completion (``squall.Ex<TAB>``) offers them
    before their first use."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    module = _CLIENT.get(name)
    if module is None:
        raise AttributeError(f"module 'squall' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if isinstance(value, type):
        value.__module__ = "squall"  # reprs and docs show the public path
    globals()[name] = value
    return value
