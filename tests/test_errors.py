"""Failures travel as codes; each code comes back as its class, in a tree a caller can branch on."""

from __future__ import annotations

import concurrent.futures

import pytest

import squall
from squall import errors, protocol
from squall.protocol import FailureCode
from squall.serialization import dumps_exception, loads_exception


def test_every_failure_code_has_a_class() -> None:
    assert set(errors.FAILURE_CLASSES) == {code.name for code in FailureCode}


@pytest.mark.parametrize("code", [c for c in FailureCode if c is not FailureCode.RAISED])
def test_an_outcome_with_each_code_raises_its_class(code: FailureCode) -> None:
    exc = loads_exception(protocol.failure_outcome(code, f"because {code.name}"))
    assert type(exc) is errors.failure_class(code)
    assert str(exc) == f"because {code.name}"


def test_the_classes_are_the_ones_callers_catch() -> None:
    expected = {
        FailureCode.WORKER_LOST: squall.WorkerLost,
        FailureCode.TASK_TIMEOUT: squall.TaskTimeout,
        FailureCode.QUEUE_FULL: squall.QueueFull,
        FailureCode.TASK_TOO_LARGE: squall.TaskTooLarge,
        FailureCode.UNKNOWN_DEPENDENCY: squall.UnknownDependency,
        FailureCode.UNKNOWN_FUNCTION: squall.UnknownFunction,
        FailureCode.DEPENDENCY_FAILED: squall.DependencyFailed,
        FailureCode.CANCELLED: concurrent.futures.CancelledError,
        FailureCode.TASK_EXPIRED: squall.TaskExpired,
    }
    for code, cls in expected.items():
        assert errors.failure_class(code) is cls


def test_a_raised_outcome_without_a_pickle_is_task_failed_never_a_name_lookup() -> None:
    # An outcome whose type text names a squall class is still the task's own exception: the
    # class comes from the code, so a worker's exception cannot pose as a router's decision.
    frames = protocol.error_outcome("squall.errors.TaskFailed", "m", "tb")
    exc = loads_exception(frames)
    assert type(exc) is squall.TaskFailed and exc.type_name == "squall.errors.TaskFailed"


def test_squall_errors_raised_on_a_worker_travel_with_their_code() -> None:
    frames = dumps_exception(squall.TaskTimeout("ran past 1 s"))
    assert protocol.read_error_summary(frames[0]).code is FailureCode.TASK_TIMEOUT
    assert protocol.read_error_summary(dumps_exception(ValueError("x"))[0]).code == 0


def test_the_tree_branches_by_what_the_caller_does_next() -> None:
    task = (squall.TaskFailed, squall.TaskTimeout, squall.WorkerLost, squall.DependencyFailed)
    for cls in (*task, squall.TaskExpired):
        assert issubclass(cls, squall.TaskError)
    for cls in (squall.QueueFull, squall.StartupError):
        assert issubclass(cls, squall.Unavailable)
    usage = (squall.ConfigError, squall.SerializationError, squall.TaskTooLarge)
    for cls in (*usage, squall.UnknownDependency, squall.UnknownFunction):
        assert issubclass(cls, squall.UsageError)
    assert issubclass(squall.ExecutorShutdown, squall.UsageError)
    assert issubclass(squall.ExecutorShutdown, RuntimeError)
    assert issubclass(errors.VersionMismatch, squall.ProtocolError)
    for name in squall.__all__:
        value = getattr(squall, name)
        if isinstance(value, type) and issubclass(value, Exception) and name != "RemoteTraceback":
            assert issubclass(value, squall.SquallError), name


def test_configuration_errors_are_config_errors(tmp_path) -> None:
    from squall import auth, config

    with pytest.raises(squall.ConfigError, match="no port"):
        config.validate_address("tcp://127.0.0.1")
    with pytest.raises(squall.ConfigError, match="auth"):
        config.check_listen_policy("tcp://0.0.0.0:5555", None, False)
    with pytest.raises(squall.ConfigError, match="cannot read key"):
        auth.ServerKeys.load(tmp_path / "no-such-keys")
    with pytest.raises(squall.ConfigError, match="--force"):
        auth.keygen(tmp_path, "k")
        auth.keygen(tmp_path, "k")
