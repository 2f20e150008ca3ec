"""The squall exception tree: one root, branching by what the caller does next.

::

    SquallError
    ├── TaskError            the task's own outcome: look at the task, not at squall
    │   ├── TaskFailed           it raised, and its exception could not travel as itself
    │   ├── TaskTimeout          it ran past its time limit
    │   ├── WorkerLost           its worker kept dying under it
    │   ├── DependencyFailed     a task it takes as an argument failed
    │   └── TaskExpired          its deadline passed before it could start
    ├── Unavailable          squall's capacity or connection: worth trying again later
    │   ├── QueueFull            the router holds all its limits allow
    │   └── StartupError         no router answered (or an embedded one did not come up)
    ├── UsageError           the call or the configuration is wrong: fix it, do not retry
    │   ├── ConfigError          a bad flag, address, environment variable or key file
    │   ├── SerializationError   a value would not pickle (or unpickle)
    │   ├── TaskTooLarge         one task bigger than the router takes
    │   ├── UnknownDependency    a task id the router does not know
    │   ├── UnknownFunction      a function body the router never got
    │   ├── TaskNotFound         no kept task has this id (never enqueued, or expired)
    │   └── ExecutorShutdown     the executor takes no new work (also a RuntimeError)
    ├── Refused              the router will not serve this peer (key refused, cut off)
    └── ProtocolError        a message squall cannot read
        └── VersionMismatch      another protocol version

Failures the router makes travel as a ``protocol.FailureCode``; ``FAILURE_CLASSES`` below is
the one table that turns a code back into a class.
"""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from squall.protocol import FailureCode


class SquallError(Exception):
    """Base of every error squall raises."""


# -- the task's own outcome ----------------------------------------------------------------


class TaskError(SquallError):
    """The task did not give a value: its outcome says why. Retrying squall will not help;
    the task (or its arguments) might."""


class TaskFailed(TaskError):
    """The task raised remotely and its exception could not travel as itself.

    Carries the remote exception's type name, message and traceback as text.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.remote_message, self.remote_traceback))


class DependencyFailed(TaskError):
    """A future passed as an argument failed or was cancelled, so this task could not run.

    Its ``__cause__`` is the dependency's own exception (kept across the wire).
    """

    def __reduce__(self) -> tuple[object, ...]:
        return _dependency_failed, (str(self), self.__cause__)


def _dependency_failed(message: str, cause: BaseException | None) -> DependencyFailed:
    error = DependencyFailed(message)
    error.__cause__ = cause
    return error


class TaskTimeout(TaskError):
    """The task ran past its ``timeout`` and was stopped."""


class WorkerLost(TaskError):
    """The worker died while running the task, too many times to try again."""


class TaskExpired(TaskError):
    """The task's deadline passed before any worker started it; it never ran."""


# -- squall's capacity or connection: try again later ---------------------------------------


class Unavailable(SquallError):
    """squall could not take or reach the work right now; the same call may succeed later."""


class QueueFull(Unavailable):
    """The router holds as many tasks (or bytes of arguments) as its limits allow."""


class StartupError(Unavailable):
    """No router answered in time, or an embedded router or worker node did not come up."""


# -- usage and configuration: fix the call --------------------------------------------------


class UsageError(SquallError):
    """The call or the configuration is wrong; the message says what to change."""


class ConfigError(UsageError):
    """A bad flag, address, environment variable, key file or key directory."""


class SerializationError(UsageError):
    """A value would not pickle (or unpickle); the message names which one."""


class TaskTooLarge(UsageError):
    """One task's arguments are bigger than the router accepts from a client."""


class UnknownDependency(UsageError):
    """A task depends on a task id the router does not know (never submitted, or long gone)."""


class UnknownFunction(UsageError):
    """A task names a function body this client never uploaded to the router."""


class TaskNotFound(UsageError, LookupError):
    """No kept task has this id: it was never enqueued, or its outcome expired (the message
    says which). Also a LookupError, as a missing key is."""


class ExecutorShutdown(UsageError, RuntimeError):
    """The executor was shut down; it takes no new work.

    Also a RuntimeError, which is what ``concurrent.futures`` executors raise.
    """


# -- the peer itself ------------------------------------------------------------------------


class Refused(SquallError):
    """The router will not serve this peer: its key is not (or no longer) allowed, or it was
    cut off (reading too slowly, sending garbage). Trying again as is will not help."""


class ProtocolError(SquallError):
    """A frame or message squall cannot read.

    Keeps the raw frames so that whoever logs the error can show what arrived.
    """

    def __init__(self, message: str, frames: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.frames = frames or []


class VersionMismatch(ProtocolError):
    """The message is squall's, but from another protocol version."""

    def __init__(self, version: int, supported: int, frames: list[bytes] | None = None) -> None:
        super().__init__(
            f"protocol version {version} is not supported (this is {supported})", frames
        )
        self.version = version


class RemoteTraceback(Exception):
    """Holds the traceback text of a remote exception; chained as its ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.tb}"


#: the exception class for each failure code (``protocol.FailureCode``, by name: protocol.py
#: imports this module) the router or squall's worker code makes; RAISED is the task's own
#: exception, rebuilt from its pickle or, failing that, as TaskFailed
FAILURE_CLASSES: dict[str, type[BaseException]] = {
    "RAISED": TaskFailed,
    "WORKER_LOST": WorkerLost,
    "TASK_TIMEOUT": TaskTimeout,
    "QUEUE_FULL": QueueFull,
    "TASK_TOO_LARGE": TaskTooLarge,
    "UNKNOWN_DEPENDENCY": UnknownDependency,
    "UNKNOWN_FUNCTION": UnknownFunction,
    "DEPENDENCY_FAILED": DependencyFailed,
    "CANCELLED": concurrent.futures.CancelledError,
    "TASK_EXPIRED": TaskExpired,
    "TASK_NOT_FOUND": TaskNotFound,
}


def failure_class(code: FailureCode) -> type[BaseException]:
    """The exception class a caller gets for an outcome with this code."""
    return FAILURE_CLASSES[code.name]


def failure_code_of(exc: BaseException) -> FailureCode:
    """The code a worker sends beside an exception squall raised itself (a timeout, a failed
    dependency); RAISED for the task's own exceptions."""
    from squall.protocol import FailureCode

    for name, cls in FAILURE_CLASSES.items():
        if name != "RAISED" and type(exc) is cls:
            return FailureCode[name]
    return FailureCode.RAISED
