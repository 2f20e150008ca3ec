"""A client whose router is gone for good does not hang its process at exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import Cluster

pytestmark = pytest.mark.timeout(120)


def test_exit_gives_up_on_a_router_gone_for_good(cluster: Cluster, tmp_path) -> None:
    router = cluster.start_router()
    cluster.start_workers(processes=1, concurrency=10)
    script = textwrap.dedent(
        f"""
        import time, squall
        import squall.client.executor as executor
        executor.ROUTER_GONE_AFTER = 2.0  # 60 s by default
        ex = squall.Executor({cluster.address!r}, connect_timeout=10)
        fut = ex.submit(time.sleep, 30)
        while not fut.running():
            time.sleep(0.05)
        print("running", flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "running"
        os.kill(router.pid, signal.SIGKILL)  # gone for good: nobody will ever answer
        started = time.monotonic()
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert time.monotonic() - started < 40
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
