"""Functions called by name: deployed with the workers (``--import``) or published to the
router by value (``ex.publish``), called with pickles from Python or with JSON (as the HTTP
gateway and other languages do). Real router, real workers; the router never unpickles."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import squall
from conftest import wait_for
from squall.options import TaskOptions

pytestmark = pytest.mark.timeout(120)

TASKS = """
import squall

@squall.function("math.add")
def add(a, b):
    return a + b

@squall.function("text.shout")
def shout(text):
    if not text:
        raise ValueError("nothing to shout")
    return text.upper() + "!"

@squall.function("count.up")
def count(n):
    yield from range(n)

@squall.function("odd.result")
def odd():
    return {1, 2}
"""


def _worker_pid() -> int:
    import os

    return os.getpid()


def deploy(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    """Write module ``name`` where a worker started with the returned env imports it."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return {"PYTHONPATH": str(tmp_path)}


def test_deployed_functions_are_called_by_name_from_python(cluster, tmp_path: Path) -> None:
    router = cluster.start_router()
    env = deploy(tmp_path, "deployed_tasks", TASKS)
    cluster.start_workers(1, 100, "--import", "deployed_tasks", env=env)
    with cluster.executor() as ex:
        assert ex.submit("math.add", 2, 3).result(30) == 5
        assert list(ex.map("math.add", [1, 2], [10, 20])) == [11, 22]
        assert list(ex.stream("count.up", 4)) == [0, 1, 2, 3]
        assert ex.enqueue("math.add", "a", "b").result(30) == "ab"
        with pytest.raises(ValueError, match="nothing to shout"):
            ex.submit("text.shout", "").result(30)  # a Python caller gets the exception
        served = {f.name: f.workers for f in ex.functions()}
        assert served == {"count.up": 1, "math.add": 1, "odd.result": 1, "text.shout": 1}
        pid = ex.submit(_worker_pid).result(30)
        assert {f.served_by for f in ex.functions()} == {(pid,)}  # where each is served
    assert "unpickling=disabled" in router.output()


def test_json_calls_carry_json_both_ways_and_errors_as_text(cluster, tmp_path: Path) -> None:
    cluster.start_router()
    env = deploy(tmp_path, "json_tasks", TASKS)
    cluster.start_workers(1, 100, "--import", "json_tasks", env=env)
    with cluster.executor() as ex:
        assert ex.submit_json("math.add", [2, 3]).result(30) == 5
        assert ex.submit_json("math.add", kwargs={"a": [1], "b": [2]}).result(30) == [1, 2]
        with pytest.raises(squall.TaskFailed) as raised:
            ex.submit_json("text.shout", [""]).result(30)
        error = raised.value
        assert (error.type_name, error.remote_message) == ("ValueError", "nothing to shout")
        assert 'raise ValueError("nothing to shout")' in error.remote_traceback
        with pytest.raises(squall.TaskFailed, match="Object of type set is not JSON"):
            ex.submit_json("odd.result").result(30)
        with pytest.raises(squall.SerializationError, match="bytes"):
            ex.submit_json("math.add", [b"x", b"y"])  # refused at the call, naming the type
        assert list(ex.stream_json("count.up", [3])) == [0, 1, 2]
        kept = ex.enqueue_json("math.add", [5, 6], options=TaskOptions(timeout=10))
        assert kept.result(30) == 11
        assert ex.task_info(kept.id).state == "succeeded"


def test_a_name_nobody_serves_waits_then_runs_where_it_is_served(cluster, tmp_path: Path) -> None:
    cluster.start_router()
    cluster.start_workers(1, 100)  # serves no names: must never be sent the call
    with cluster.executor() as ex:
        waiting = ex.submit("later.double", 21)
        kept = ex.enqueue("later.double", 4)
        wait_for(
            lambda: cluster.stats()["functions"].get("later.double", {}).get("queued") == 2,
            10,
            "the calls wait, counted under their name",
        )
        assert cluster.stats()["functions"]["later.double"]["workers"] == 0
        assert "no worker serves" in (ex.task_info(kept.id).reason or "")
        time.sleep(0.5)
        assert not waiting.done()
        env = deploy(
            tmp_path,
            "later_tasks",
            'import squall\nsquall.function("later.double")(lambda x: 2 * x)\n',
        )
        cluster.start_workers(1, 100, "--import", "later_tasks", env=env)
        assert waiting.result(30) == 42
        assert kept.result(30) == 8


def test_published_functions_are_versioned_and_kept_by_the_router(cluster, tmp_path) -> None:
    data = tmp_path / "data"
    router = cluster.start_router("--data", str(data))
    cluster.start_workers(1, 100)
    factor = 3
    with cluster.executor() as ex:
        assert ex.publish("reports.times", lambda x: x * factor) == 1  # a closure, by value
        assert ex.submit("reports.times", 5).result(30) == 15
        assert ex.publish("reports.times", lambda x: -x) == 2
        assert ex.submit("reports.times", 5).result(30) == -5
        assert ex.submit_json("reports.times", [7]).result(30) == -7
        (info,) = ex.functions()
        assert (info.name, info.version, info.workers) == ("reports.times", 2, 0)
    router.stop()
    cluster.procs.remove(router)
    cluster.start_router("--data", str(data))  # (a new port: the same store)
    cluster.start_workers(1, 100)
    with cluster.executor() as ex:
        assert ex.submit("reports.times", 2).result(30) == -2  # survived the restart
        assert ex.unpublish("reports.times") is True
        assert ex.unpublish("reports.times") is False
        assert ex.functions() == []


def test_bad_names_and_imports_fail_at_once_in_one_line(cluster, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not 'no spaces'"):
        squall.function("no spaces")

    def worker_importing(module: str) -> subprocess.CompletedProcess[str]:
        command = ["worker", "--connect", "ipc:///nowhere/x", "--import", module]
        return subprocess.run(
            [sys.executable, "-m", "squall", *command],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    ran = worker_importing("no_such_module_here")
    assert ran.returncode != 0
    assert "--import no_such_module_here: ModuleNotFoundError" in ran.stderr
    (tmp_path / "plain_module.py").write_text("x = 1\n")
    ran = worker_importing("plain_module")
    assert ran.returncode != 0 and "no function is marked" in ran.stderr


def test_inline_mode_calls_the_functions_registered_in_this_process() -> None:
    @squall.function("inline.triple")
    def triple(x: int) -> int:
        return 3 * x

    with squall.Executor(inline=True) as ex:
        assert ex.submit("inline.triple", 5).result() == 15
        assert list(ex.map("inline.triple", [1, 2])) == [3, 6]
        with pytest.raises(squall.UnknownFunction, match="no function named 'inline.absent'"):
            ex.submit("inline.absent", 1)
