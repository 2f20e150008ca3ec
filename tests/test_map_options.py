"""map(ordered=False) yields in completion order; map(progress=True) draws on terminals only."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

import squall

pytestmark = pytest.mark.timeout(90)


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_unordered_map_yields_in_completion_order(remote: squall.Executor) -> None:
    delays = [0.6, 0.4, 0.2, 0.0]
    assert list(remote.map(sleep_then_return, delays)) == delays
    assert list(remote.map(sleep_then_return, delays, ordered=False)) == sorted(delays)


def test_as_completed_from_threads(remote: squall.Executor) -> None:
    futures = [remote.submit(sleep_then_return, d) for d in (0.4, 0.0, 0.2)]
    order = [f.result() for f in squall.as_completed(futures, timeout=10)]
    assert order == [0.0, 0.2, 0.4]


PROGRESS = textwrap.dedent("""
    import squall
    with squall.Executor(processes=1, concurrency=10) as ex:
        print(sum(ex.map(abs, range(-200, 0), progress=True)))
""")


def test_progress_bar_only_on_a_terminal() -> None:
    # Not a terminal: output only the result, stderr silent.
    ran = subprocess.run(
        [sys.executable, "-c", PROGRESS], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(sum(range(1, 201)))
    assert "200/200" not in ran.stderr and "%" not in ran.stderr

    # A pseudo-terminal: tqdm draws its bar there.
    controller, terminal = pty.openpty()
    # A real terminal has a size (a fresh pty has 0 rows, where tqdm draws nothing).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRESS],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(60) == 0, output
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.decode(errors="replace")
    assert "200/200" in text and "100%" in text, text
