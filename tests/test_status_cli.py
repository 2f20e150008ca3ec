"""``squall status`` and ``squall inspect`` against a real router and workers, run as the
operator runs them: the venv's ``squall`` in a subprocess, piped or on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, free_port, wait_for

pytestmark = pytest.mark.timeout(120)

_ENTRY = Path(sys.executable).with_name("squall")
SQUALL = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "squall"]
#: what terminals draw with: colours, cursor moves, erasing, modes
ANSI = re.compile(
    r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]"
)
HEADER = "squall router "
#: the fields of ``totals`` that are the router's counters, as ex.stats() reports them
COUNTED = (
    "submitted",
    "completed",
    "succeeded",
    "failed",
    "cancelled",
    "redelivered",
    "workers",
    "capacity",
    "queued",
    "running",
    "scheduled",
    "enqueued",
)


def fails_loudly(n: int) -> int:
    raise ValueError(f"disk quota exceeded on volume {n}")  # the line inspect must show


def sleeps(seconds: float) -> None:
    time.sleep(seconds)


def squall(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SQUALL, *args], capture_output=True, text=True, timeout=timeout)


def failed_id(ex: Any) -> str:
    """The id of the newest failed task, as the router lists it."""
    tasks = wait_for(lambda: ex.tasks(state="failed")["tasks"], 10, "a failed task listed")
    return str(tasks[0]["id"])


@pytest.mark.timeout(90)
def test_json_agrees_with_the_routers_stats(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=2, concurrency=50)
    with cluster.executor() as ex:
        assert list(ex.map(abs, range(-6, 0))) == [6, 5, 4, 3, 2, 1]
        for n in (1, 2):
            with pytest.raises(ValueError):
                ex.submit(fails_loudly, n).result(timeout=30)
        running = ex.enqueue(sleeps, 60)  # one task still running while we look
        wait_for(lambda: ex.stats()["running"] == 1, 15, "the sleeper started")
        before = ex.stats()
        shown = squall("status", "--connect", cluster.address, "--insecure", "--json")
        after = ex.stats()
        ex.cancel_by_id(running.id)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 1, shown.stdout  # one JSON object, for scripts
    status = json.loads(lines[0])
    totals = status["totals"]
    for field in COUNTED:
        assert before[field] == after[field], field  # nothing moved while the CLI looked
        assert totals[field] == before[field], (field, totals[field], before[field])
    assert (totals["submitted"], totals["succeeded"], totals["failed"]) == (9, 6, 2)
    assert totals["workers"] == 2 and totals["running"] == 1
    assert totals["worker_pids"] == before["worker_pids"]
    assert sorted(w["pid"] for w in status["workers"]) == before["worker_pids"]
    assert sum(w["running"] for w in status["workers"]) == 1
    assert status["outcomes"]["failed"] == 2
    assert {f["error_message"] for f in status["recent_failures"]} == {
        "disk quota exceeded on volume 1",
        "disk quota exceeded on volume 2",
    }


@pytest.mark.timeout(90)
def test_plain_status_in_a_pipe_names_workers_queues_and_failures(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_router()
    cluster.start_workers(2, 50, "--queues", "default,emails")
    with cluster.executor() as ex:
        assert ex.options(queue="emails").submit(abs, -3).result(timeout=30) == 3
        with pytest.raises(ValueError):
            ex.submit(fails_loudly, 7).result(timeout=30)
        pids = ex.stats()["worker_pids"]
        shown = squall("status", "--connect", cluster.address, "--insecure")

        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        assert "\x1b" not in out, out  # not a terminal: no escape codes
        assert out.startswith(HEADER), out
        for pid in pids:
            assert re.search(rf"\b{pid}\b", out), (pid, out)
        assert re.search(r"^  default\s", out, re.M) and re.search(r"^  emails\s", out, re.M), out
        assert "ValueError: disk quota exceeded on volume 7" in out, out

        # --watch into a file: a snapshot each interval, separated by a blank line
        log = tmp_path / "watch.log"
        with open(log, "w") as sink:
            watch = subprocess.Popen(
                [*SQUALL, "status", "--connect", cluster.address, "--insecure", "--watch"]
                + ["--interval", "0.2"],
                stdout=sink,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_for(lambda: log.read_text().count(HEADER) >= 3, 20, "three snapshots")
            finally:
                watch.send_signal(signal.SIGINT)
                _, err = watch.communicate(timeout=15)
    assert watch.returncode == 0, err
    text = log.read_text()
    assert "\x1b" not in text
    assert text.count("\n\n" + HEADER) == text.count(HEADER) - 1, text[:3000]


class Terminal:
    """A pseudo-terminal for a child process; a thread reads all it draws."""

    def __init__(self, rows: int = 60, columns: int = 200) -> None:
        self.master, self.slave = os.openpty()
        size = struct.pack("HHHH", rows, columns, 0, 0)
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, size)
        self._raw = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        proc = subprocess.Popen(
            args,
            stdin=self.slave,
            stdout=self.slave,
            env={**env, "TERM": "xterm-256color", **kwargs.pop("env", {})},
            start_new_session=True,
            **kwargs,
        )
        os.close(self.slave)  # the child's now: reading ends (EIO) once it exits
        self._reader.start()
        return proc

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._raw += chunk

    def raw(self) -> str:
        with self._lock:
            return self._raw.decode(errors="replace")

    def text(self) -> str:
        """What was drawn, without escape codes or carriage returns."""
        return ANSI.sub("", self.raw()).replace("\r", "")

    def frames(self) -> list[str]:
        """The views drawn so far, one per redraw (the last one may be partial)."""
        return [HEADER + part for part in self.text().split(HEADER)[1:]]

    def wait(self, predicate: Callable[[list[str]], Any], timeout: float, what: str) -> None:
        try:
            wait_for(lambda: predicate(self.frames()), timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; drawn:\n{self.text()[-4000:]}") from None

    def close(self) -> None:
        os.close(self.master)
        self._reader.join(5)


def shows(frame: str, pid: int) -> bool:
    return re.search(rf"\b{pid}\b", frame) is not None


@pytest.mark.timeout(90)
def test_watch_on_a_terminal_redraws_until_ctrl_c(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_workers(1, 50)
    (first_pid,) = cluster.stats()["worker_pids"]
    terminal = Terminal()
    watch = terminal.start(
        [*SQUALL, "status", "--connect", cluster.address, "--insecure", "--watch"]
        + ["--interval", "0.3"],
        stderr=subprocess.PIPE,
    )
    try:
        terminal.wait(lambda f: f and shows(f[0], first_pid), 20, "the first view")
        cluster.start_workers(1, 50)  # a second node: a new worker row
        (new_pid,) = set(cluster.stats()["worker_pids"]) - {first_pid}
        terminal.wait(lambda f: any(shows(x, new_pid) for x in f[1:]), 20, "the new worker")
        frames = terminal.frames()
        assert not shows(frames[0], new_pid)
        later = next(x for x in frames[1:] if shows(x, new_pid))
        assert "2 workers," in later and "1 worker," in frames[0], later
        assert "\x1b[" in terminal.raw()  # rich drew it: colours and cursor moves
        assert "\x1b[2K" in terminal.raw() or "\x1b[1A" in terminal.raw()  # redrawn in place
    finally:
        watch.send_signal(signal.SIGINT)
        try:
            _, err_bytes = watch.communicate(timeout=15)
        finally:
            terminal.close()
    err = err_bytes.decode()
    assert watch.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


@pytest.mark.timeout(30)
def test_watch_on_a_terminal_without_rich_says_what_to_install(tmp_path: Path) -> None:
    no_rich = tmp_path / "no_rich" / "rich"
    no_rich.mkdir(parents=True)
    (no_rich / "__init__.py").write_text("raise ImportError('rich is not installed here')\n")
    terminal = Terminal()
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing there: refused before connecting
    watch = terminal.start(
        [*SQUALL, "status", "--connect", address, "--insecure", "--watch"],
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(no_rich.parent)},
    )
    try:
        _, err = watch.communicate(timeout=20)
    finally:
        terminal.close()
    assert watch.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "pip install 'squall[status]'" in lines[0], lines


@pytest.mark.timeout(90)
def test_inspect_shows_a_failure_and_refuses_an_unknown_id(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_workers(1, 50)
    with cluster.executor() as ex:
        with pytest.raises(ValueError):
            ex.submit(fails_loudly, 3).result(timeout=30)
        task_id = failed_id(ex)
        (pid,) = ex.stats()["worker_pids"]
    shown = squall("inspect", task_id, "--connect", cluster.address, "--insecure")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert task_id in out and "fails_loudly" in out, out
    assert re.search(r"^state\s+failed$", out, re.M), out
    assert re.search(rf"^worker\s+pid {pid}$", out, re.M), out
    assert "ValueError: disk quota exceeded on volume 3" in out, out
    assert "Traceback (most recent call last)" in out, out
    assert 'raise ValueError(f"disk quota exceeded on volume {n}")' in out, out
    assert re.search(r"^ran\s+\d", out, re.M) and re.search(r"^waited\s+\d", out, re.M), out
    assert re.search(r"^  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\s+failed\s+\+", out, re.M), out

    as_json = squall("inspect", task_id, "--connect", cluster.address, "--insecure", "--json")
    record = json.loads(as_json.stdout)
    assert record["id"] == task_id and record["error_type"] == "ValueError"
    assert "fails_loudly" in record["traceback"]

    unknown = squall("inspect", "0123456789abcdef", "--connect", cluster.address, "--insecure")
    assert unknown.returncode == 1 and unknown.stdout == ""
    lines = unknown.stderr.strip().splitlines()
    assert len(lines) == 1 and "no task 0123456789abcdef" in lines[0], unknown.stderr


@pytest.mark.timeout(60)
def test_an_unreachable_router_is_one_line_and_status_1() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    result = squall("status", "--connect", address, "--insecure", timeout=40)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0], result.stderr  # no reconnect warnings
    assert lines[0].startswith("squall status: "), lines


BAD = [
    (["status", "--connect", "tcp://127.0.0.1:5555", "--interval", "-1"], "--interval"),
    (["status", "--connect", "tcp://127.0.0.1:5555", "--watch", "--interval", "0"], "--interval"),
    (["status", "--connect", "tcp://127.0.0.1:5555", "--interval", "soon"], "--interval"),
    (["status", "--connect", "tcp://127.0.0.1:99999"], "port 99999 is out of range"),
    (["status"], "--connect"),
    (["inspect", "not-an-id", "--connect", "tcp://127.0.0.1:5555"], "not a squall task id"),
    (["inspect", "--connect", "tcp://127.0.0.1:5555"], "TASK_ID"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "says"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_flag_is_refused_in_one_line(args: list[str], says: str) -> None:
    result = squall(*args, timeout=20)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
