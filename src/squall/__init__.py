"""squall: run any Python callable on a fleet of gevent workers behind a ZeroMQ router."""

from squall._version import __version__
from squall.client.executor import Executor
from squall.client.future import Future
from squall.errors import (
    DependencyFailed,
    ExecutorShutdown,
    ProtocolError,
    RemoteTraceback,
    SerializationError,
    SquallError,
    StartupError,
    TaskFailed,
    WorkerLost,
)

__all__ = [
    "__version__",
    # client
    "Executor",
    "Future",
    # errors
    "SquallError",
    "ProtocolError",
    "SerializationError",
    "TaskFailed",
    "WorkerLost",
    "DependencyFailed",
    "StartupError",
    "ExecutorShutdown",
    "RemoteTraceback",
]

for _name in ("Executor", "Future"):
    globals()[_name].__module__ = "squall"  # reprs and docs show the public path
