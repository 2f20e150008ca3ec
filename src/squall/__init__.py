"""squall: run any Python callable on a fleet of gevent workers behind a ZeroMQ router."""

from squall._version import __version__
from squall.client.aio import AsyncExecutor
from squall.client.executor import Executor
from squall.client.future import Future, as_completed
from squall.client.stream import Stream
from squall.errors import (
    DependencyFailed,
    ExecutorShutdown,
    ProtocolError,
    RemoteTraceback,
    SerializationError,
    SquallError,
    StartupError,
    TaskFailed,
    TaskTimeout,
    WorkerLost,
)

__all__ = [
    "__version__",
    # client
    "Executor",
    "AsyncExecutor",
    "Future",
    "Stream",
    "as_completed",
    # errors
    "SquallError",
    "ProtocolError",
    "SerializationError",
    "TaskFailed",
    "WorkerLost",
    "TaskTimeout",
    "DependencyFailed",
    "StartupError",
    "ExecutorShutdown",
    "RemoteTraceback",
]

for _name in ("Executor", "AsyncExecutor", "Future", "Stream"):
    globals()[_name].__module__ = "squall"  # reprs and docs show the public path
