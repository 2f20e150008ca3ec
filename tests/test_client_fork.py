"""An Executor used in a child forked after it was made raises at once (#12 item 16)."""

from __future__ import annotations

import os
import select

import pytest

import squall
from squall.client.executor import ExecutorForked

pytestmark = pytest.mark.timeout(90)


def _in_child(ex: squall.Executor, action: str) -> str:
    """Fork; the child runs ``action`` on ``ex`` and writes what it raised to a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read_end)
            try:
                if action == "submit":
                    ex.submit(abs, -1).result(timeout=5)
                elif action == "map":
                    list(ex.map(abs, [-1], timeout=5))
                else:
                    list(ex.stream(range, 3))
                message = "no error"
            except BaseException as exc:
                message = f"{type(exc).__name__}: {exc}"
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 20)
        assert ready, "the forked child hung"
        return os.read(read_end, 4096).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() in a threaded process
def test_a_forked_child_gets_a_clear_error_and_the_parent_goes_on() -> None:
    with squall.Executor(processes=1) as ex:
        assert ex.submit(abs, -2).result(timeout=30) == 2
        for action in ("submit", "map", "stream"):
            message = _in_child(ex, action)
            assert message.startswith("ExecutorForked: this Executor was made in process")
            assert "create the Executor after the fork" in message
        assert ex.submit(abs, -3).result(timeout=30) == 3
    assert issubclass(ExecutorForked, squall.SquallError)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_inline_executor_works_in_a_forked_child() -> None:
    with squall.Executor(inline=True) as ex:
        assert _in_child(ex, "submit") == "no error"
