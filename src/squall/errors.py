"""The squall exception tree: one root, branches by what the caller does next."""

from __future__ import annotations


class SquallError(Exception):
    """Base of every error squall raises."""


class ProtocolError(SquallError):
    """A frame or message squall cannot read.

    Keeps the raw frames so that whoever logs the error can show what arrived.
    """

    def __init__(self, message: str, frames: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.frames = frames or []


class SerializationError(SquallError):
    """A value would not pickle (or unpickle); the message names which one."""


class TaskFailed(SquallError):
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


class DependencyFailed(SquallError):
    """A future passed as an argument failed or was cancelled, so this task could not run.

    Its ``__cause__`` is the dependency's own exception (kept across the wire).
    """

    def __reduce__(self) -> tuple[object, ...]:
        return _dependency_failed, (str(self), self.__cause__)


def _dependency_failed(message: str, cause: BaseException | None) -> DependencyFailed:
    error = DependencyFailed(message)
    error.__cause__ = cause
    return error


class TaskTimeout(SquallError):
    """The task ran past its ``timeout`` and was stopped."""


class WorkerLost(SquallError):
    """The worker died while running the task, too many times to try again."""


class Refused(SquallError):
    """The router will not serve this peer: its key is not (or no longer) allowed, or it was
    cut off (reading too slowly, sending garbage). Trying again as is will not help."""


class StartupError(SquallError):
    """An embedded router or worker node did not come up."""


class ExecutorShutdown(SquallError, RuntimeError):
    """The executor was shut down; it takes no new work.

    Also a RuntimeError, which is what ``concurrent.futures`` executors raise.
    """


class RemoteTraceback(Exception):
    """Holds the traceback text of a remote exception; chained as its ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.tb}"
