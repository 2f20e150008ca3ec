"""Periodic schedules and held tasks on real processes, across a SIGKILLed durable router."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import squall
from conftest import wait_for
from squall import ids
from squall.router.timetable import firing_id

pytestmark = pytest.mark.timeout(180)


def note(path: str, name: str, seconds: float = 0.0) -> None:
    """One run of ``name``'s task, logged with its start time."""
    with open(path, "a") as log:
        log.write(f"{name} {time.time()}\n")
    time.sleep(seconds)


def held(path: str, key: int) -> None:
    with open(path, "a") as log:
        log.write(f"held {key}\n")


def runs(path: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = collections.defaultdict(list)
    if os.path.exists(path):
        for line in Path(path).read_text().splitlines():
            name, value = line.split()
            found[name].append(float(value))
    return found


def _lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines() if os.path.exists(path) else []


SCHEDULES = {
    "skip": {"every": 2, "catchup": "skip"},
    "latest": {"every": 2},
    "all": {"every": 2, "catchup": "all"},
    "overlap": {"every": 1, "overlap": "skip", "seconds": 2.5},
    "cron": {"cron": "* * * * *", "tz": "Europe/Berlin"},
}


def _register(address: str, log: str, held_log: str) -> str:
    """A client process: 1,000 tasks held 6 s, the five schedules; then it exits at once."""
    return textwrap.dedent(
        f"""
        import json, os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import squall
        from test_schedules import SCHEDULES, held, note
        ex = squall.Executor({address!r}, connect_timeout=10)
        ex.options(delay=6).enqueue_map(held, [{held_log!r}] * 1000, range(1000))
        anchors = {{}}
        for name, spec in SCHEDULES.items():
            spec = dict(spec)
            seconds = spec.pop("seconds", 0.0)
            info = ex.schedule(name, note, {log!r}, name, seconds, **spec)
            anchors[name] = info.next_fire
        print(json.dumps(anchors))
        os._exit(0)
        """
    )


def test_a_killed_durable_router_fires_no_tick_twice_and_runs_held_tasks_once(
    cluster, tmp_path
) -> None:
    import json

    data = str(tmp_path / "data")
    log, held_log = str(tmp_path / "runs"), str(tmp_path / "held")
    cluster.start_router("--data", data)
    cluster.start_workers(1, 500)
    script = _register(cluster.address, log, held_log)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, timeout=60
    )
    anchors = json.loads(out.stdout)
    time.sleep(3.0)  # a tick or two fire
    killed = time.time()
    os.kill(cluster.router.pid, signal.SIGKILL)
    cluster.router.popen.wait(10)
    time.sleep(5.0)
    restarted = time.time()
    cluster.router = cluster.start(
        "router", "--bind", cluster.address, "--insecure", "--data", data
    )
    with squall.Executor(cluster.address, connect_timeout=20) as ex:
        wait_for(lambda: len(_lines(held_log)) >= 1000, 60, "held tasks")
        time.sleep(4.5)  # ticks after the restart
        listed = {info.name: info for info in ex.schedules()}
        assert set(listed) == set(SCHEDULES)
        end = time.time()

        def fired(name: str, every: float) -> dict[float, float | None]:
            """Each grid tick of ``name`` up to now: how late the router made its task
            (seconds after the tick), None if it never did."""
            ticks: dict[float, float | None] = {}
            t = anchors[name]
            while t < limit(name):
                try:
                    ticks[t] = ex.task_info(ids.to_text(firing_id(name, t))).submitted - t
                except squall.TaskNotFound:
                    ticks[t] = None
                t += every
            return ticks

        def limit(name: str) -> float:
            """Midway between two ticks of ``name`` (every 2 s), a second before the end: a run
            started before it belongs to a tick before it."""
            return anchors[name] + 2.0 * ((end - 2.0 - anchors[name]) // 2.0) + 1.0

        counted = runs(log)
        for name in ("skip", "latest", "all"):
            ticks = fired(name, 2.0)
            ran = [t for t in counted[name] if t < limit(name) + 0.5]
            # No tick ran twice: as many runs as tasks the router made for it.
            assert len(ran) == sum(late is not None for late in ticks.values()), name
            outage = [t for t in ticks if killed + 0.2 < t < restarted - 0.2]
            assert len(outage) >= 2, outage
            # Caught up: made by the restarted router for a tick that passed while it was down.
            caught_up = [t for t, late in ticks.items() if t > killed and late and late > 0.1]
            if name == "skip":
                assert caught_up == [] and all(ticks[t] is None for t in outage)
            elif name == "latest":
                assert len(caught_up) == 1 and caught_up[0] >= outage[-1]
            else:
                assert set(outage) <= set(caught_up)
            assert any(late is not None for t, late in ticks.items() if t > restarted + 1.0)
        overlap = sorted(counted["overlap"])
        assert all(b - a >= 2.4 for a, b in zip(overlap, overlap[1:], strict=False)), overlap
    held_runs = collections.Counter(_lines(held_log))
    assert len(held_runs) == 1000 and set(held_runs.values()) == {1}
    # The operator's view of the same router.
    shown = subprocess.run(
        [sys.executable, "-m", "squall", "schedules", "--connect", cluster.address, "--insecure"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    for name in SCHEDULES:
        assert name in shown.stdout
    assert "cron * * * * * (Europe/Berlin)" in shown.stdout


def test_schedules_are_listed_paused_resumed_replaced_and_removed(cluster, tmp_path) -> None:
    cluster.start_router()
    cluster.start_workers(1, 10)
    log = str(tmp_path / "runs")
    with squall.Executor(cluster.address) as ex:
        info = ex.schedule("report", note, log, "report", every=1)
        assert info.spec == "every 1 s" and not info.paused and info.next_fire > time.time()
        wait_for(lambda: len(runs(log)["report"]) >= 2, 10, "two firings")
        last = ex.schedules()[0].last_id
        assert ex.attach(last).result(timeout=10) is None
        assert ex.pause_schedule("report") and ex.schedules()[0].paused
        time.sleep(0.5)
        before = len(runs(log)["report"])
        time.sleep(2.0)
        assert len(runs(log)["report"]) == before  # paused: nothing fires
        assert ex.resume_schedule("report")
        wait_for(lambda: len(runs(log)["report"]) > before, 10, "resumed")
        ex.schedule("report", note, log, "replaced", cron="0 0 1 1 *", tz="America/New_York")
        (replaced,) = ex.schedules()
        assert replaced.spec == "cron 0 0 1 1 * (America/New_York)"
        assert ex.unschedule("report") and ex.schedules() == []
        assert not ex.unschedule("report")
        with pytest.raises(ValueError, match="cron"):
            ex.schedule("bad", note, log, "bad", cron="61 * * * *")
        with pytest.raises(ValueError, match="tz"):
            ex.schedule("bad", note, log, "bad", every=5, tz="Mars/Olympus")
        with pytest.raises(ValueError, match="every"):
            ex.schedule("bad", note, log, "bad")
