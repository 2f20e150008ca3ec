"""A worker's first hour (issue 12): key problems end the node with one line, a dead address is
reported again and again, failed tasks are logged under their function's name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import Cluster, make_keys, wait_for


def _exited(cluster: Cluster, proc_index: int = -1) -> bool:
    return cluster.procs[proc_index].popen.poll() is not None


@pytest.mark.timeout(30)
def test_missing_key_ends_the_node_with_one_line_and_status_2(
    cluster: Cluster, tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "keys")
    (keys["node1"] / "node1.key_secret").unlink()
    cluster.address = "tcp://127.0.0.1:1"  # never reached: the keys are checked first
    node = cluster.start_keyed_worker(keys, "node1", processes=2)
    wait_for(lambda: _exited(cluster), 5, "the node did not exit")
    assert node.popen.returncode == 2
    lines = [line for line in node.output().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "node1.key_secret" in lines[0]
    assert "Traceback" not in lines[0]


@pytest.mark.timeout(30)
def test_unlisted_key_ends_the_node_at_once_naming_the_key(
    cluster: Cluster, tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "keys")
    cluster.start_keyed_router(keys)
    node = cluster.start_keyed_worker(keys, "mallory")
    wait_for(lambda: _exited(cluster), 8, "the node kept running with a refused key")
    assert node.popen.returncode == 2
    out = node.output()
    assert "refused this key" in out and "mallory" in out, out
    assert "Traceback" not in out and "AssertionError" not in out, out
    assert out.count("worker process started") == 1, out  # not restarted


@pytest.mark.timeout(30)
def test_sigterm_while_never_connected_exits_cleanly(cluster: Cluster) -> None:
    # Never connected, the sender waits to send HELLO; the final flush at SIGTERM used to
    # wait on the same socket from a second greenlet (gevent's AssertionError).
    cluster.address = "tcp://127.0.0.1:1"
    node = cluster.start("worker", "--connect", cluster.address, "--processes", "1")
    wait_for(lambda: "worker connecting" in node.output(), 10, "the worker did not start")
    node.stop(grace=10)
    out = node.output()
    assert "Traceback" not in out and "AssertionError" not in out, out


@pytest.mark.timeout(30)
def test_dead_address_is_reported_again_with_the_wait(cluster: Cluster) -> None:
    # FAST_ENV's heartbeat of 0.2 s makes the first warning come after 2 s (10 heartbeats),
    # the next 4 s later.
    cluster.address = "tcp://127.0.0.1:1"
    node = cluster.start("worker", "--connect", cluster.address, "--processes", "1")
    pattern = re.compile(r"still no answer from the router.*waited_s=(\d+)")
    wait_for(lambda: len(pattern.findall(node.output())) >= 2, 15, "no second warning")
    waits = [int(w) for w in pattern.findall(node.output())]
    assert waits[1] > waits[0] >= 1, waits


def fails_on_purpose(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.mark.timeout(60)
def test_a_failed_task_is_logged_by_the_router_with_its_function(cluster: Cluster) -> None:
    router = cluster.start_router()
    cluster.start_workers(1, 10)
    with cluster.executor() as ex:
        with pytest.raises(ValueError):
            ex.submit(fails_on_purpose, 3).result(timeout=20)
    wait_for(lambda: "task failed" in router.output(), 10, "no task failed line")
    line = next(x for x in router.output().splitlines() if "task failed" in x)
    assert "fails_on_purpose" in line, line
    assert "test_worker_first_hour" in line or "__main__" in line, line
