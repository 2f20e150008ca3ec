"""Remote tracebacks name the user's files and lines, show the source, and hide squall's frames."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import squall
from conftest import Cluster
from squall import serialization
from squall.errors import RemoteTraceback

pytestmark = pytest.mark.timeout(60)

SQUALL_DIR = str(Path(squall.__file__).resolve().parent)


def fails_in_test_module(x: int) -> int:
    raise ValueError(f"bad value {x}")  # the line the traceback must show


def remote_traceback(ex: squall.Executor, fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    with pytest.raises(Exception) as info:
        ex.submit(fn, *args).result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback), repr(info.value)
    return cause.tb, info.value


def assert_points_at(tb: str, path: str, line: int, source: str) -> None:
    assert f'File "{path}", line {line}, in ' in tb, tb
    assert f"\n    {source}" in tb, tb
    assert "<dynamic-code>" not in tb, tb
    assert SQUALL_DIR not in tb, tb


@pytest.fixture
def helper_module(tmp_path: Path) -> Iterator[Any]:
    """A user's own module outside site-packages, imported from a sys.path entry."""
    source = tmp_path / "user_helpers_tb.py"
    source.write_text(
        textwrap.dedent(
            """\
            def outer(n):
                return inner(n) + 1


            def inner(n):
                raise KeyError(f"missing {n}")
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("user_helpers_tb")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("user_helpers_tb", None)


@pytest.fixture
def remote1(cluster: Cluster) -> Iterator[squall.Executor]:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    with cluster.executor() as ex:
        yield ex


def test_function_of_the_test_module(remote1: squall.Executor) -> None:
    tb, exc = remote_traceback(remote1, fails_in_test_module, 7)
    assert isinstance(exc, ValueError) and str(exc) == "bad value 7"
    line = fails_in_test_module.__code__.co_firstlineno + 1
    assert_points_at(tb, __file__, line, 'raise ValueError(f"bad value {x}")')


def test_function_of_a_users_module(remote1: squall.Executor, helper_module: Any) -> None:
    tb, exc = remote_traceback(remote1, helper_module.outer, 3)
    assert isinstance(exc, KeyError)
    assert_points_at(tb, helper_module.__file__, 2, "return inner(n) + 1")
    assert_points_at(tb, helper_module.__file__, 6, 'raise KeyError(f"missing {n}")')
    assert tb.index("line 2, in outer") < tb.index("line 6, in inner")


def test_lambda(remote1: squall.Executor) -> None:
    divide = lambda: 1 // 0  # noqa: E731
    tb, exc = remote_traceback(remote1, divide)
    assert isinstance(exc, ZeroDivisionError)
    assert_points_at(
        tb, __file__, divide.__code__.co_firstlineno, "divide = lambda: 1 // 0  # noqa: E731"
    )


def test_client_fills_in_lines_the_worker_lacked() -> None:
    line = fails_in_test_module.__code__.co_firstlineno + 1
    worker_text = (
        "Traceback (most recent call last):\n"
        f'  File "{__file__}", line {line}, in fails_in_test_module\n'
        f'  File "/nowhere/gone.py", line 3, in lost\n'
        "ValueError: bad value 7\n"
    )
    filled = serialization.with_source_lines(worker_text)
    assert filled == worker_text.replace(
        "fails_in_test_module\n",
        "fails_in_test_module\n"
        '    raise ValueError(f"bad value {x}")  # the line the traceback must show\n',
    )


def test_a_failure_inside_squall_keeps_its_frames() -> None:
    with pytest.raises(squall.SerializationError) as info:
        serialization.loads_function(serialization.dumps(42)[0])
    exc = info.value.with_traceback(info.value.__traceback__.tb_next)  # as on a worker
    tb = serialization.format_traceback(exc)
    assert "serialization.py" in tb and "in loads_function" in tb, tb
