"""A task that crashes its worker process is charged the death; its neighbours are not."""

from __future__ import annotations

import ctypes
import time

import pytest

import squall
from conftest import Cluster

pytestmark = pytest.mark.timeout(120)


def segfault() -> None:
    time.sleep(0.3)  # let the neighbours start first
    ctypes.string_at(0)  # a real SIGSEGV


def test_a_segfault_among_fifty_neighbours_costs_them_nothing(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_workers(processes=1, concurrency=100)
    with cluster.executor() as ex:
        started = time.monotonic()
        neighbours = [ex.submit(time.sleep, 1.0) for _ in range(50)]
        crasher = ex.submit(segfault)
        with pytest.raises(squall.WorkerLost):
            crasher.result(timeout=90)
        assert all(f.result(timeout=60) is None for f in neighbours)
        took = time.monotonic() - started
        stats = cluster.stats()
    # Charged one death each, two would have made every neighbour run alone (50 s and more).
    assert took < 30, f"the neighbours took {took:.0f} s"
    assert stats["worker_deaths"] >= 3
