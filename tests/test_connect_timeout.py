"""connect_timeout means what it says, and a failed start leaves nothing running."""

from __future__ import annotations

import threading
import time

import pytest

import squall
from conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(60)


def _io_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "squall-client-io"}


def test_no_router_fails_within_connect_timeout_and_leaves_no_thread() -> None:
    before = _io_threads()  # (other tests' executors may still be closing)
    started = time.monotonic()
    with pytest.raises(squall.StartupError, match="within 2 s"):
        squall.Executor(f"tcp://127.0.0.1:{free_port()}", connect_timeout=2)
    assert time.monotonic() - started < 3.5
    wait_for(
        lambda: not (_io_threads() - before),
        5,
        "the I/O thread gone",
    )


def test_the_embedded_default_keeps_one_deadline_for_its_whole_start() -> None:
    started = time.monotonic()
    try:
        squall.Executor(processes=1, connect_timeout=0.5).shutdown()
    except squall.StartupError:
        pass  # router and worker could not both come up in 0.5 s: the usual case
    assert time.monotonic() - started < 3.0  # not 0.5 s per step, plus stats() timeouts
