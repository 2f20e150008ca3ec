"""Prometheus metrics on real processes: the gateway's ``GET /metrics`` and the router's own
``--metrics-bind`` endpoint, read with prometheus_client's own parser."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Cluster, free_port, wait_for
from squall.http import tokens
from test_http_gateway import FIXTURES, start_gateway

pytestmark = pytest.mark.timeout(60)

#: what the workload runs: queue -> (function, outcome) -> tasks
EXPECTED = {
    "default": {("math.add", "succeeded"): 6, ("text.shout", "failed"): 2},
    "emails": {("text.shout", "succeeded"): 3, ("text.shout", "failed"): 1},
}
#: tasks left queued on a queue no worker serves
IDLE = 2

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, token: str = "") -> tuple[int, str, str]:
    """GET ``url``: (status, content type, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and each family's type, by prometheus_client's parser."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def start_node(cluster: Cluster, processes: int = 2) -> None:
    env = {"PYTHONPATH": str(FIXTURES)}
    flags = ("--import", "squall_fixtures", "--queues", "default,emails")
    cluster.start_workers(processes, 10, *flags, env=env)


def run_workload(ex: Any) -> list[Any]:
    """Run EXPECTED's tasks to their end, and leave IDLE tasks queued on queue "idle" (their
    futures: cancel them before the executor closes, or it waits for them)."""
    idle = [ex.options(queue="idle").submit("sleep.echo", 0) for _ in range(IDLE)]
    emails = ex.options(queue="emails")
    futures = [ex.submit("math.add", i, 1) for i in range(6)]
    futures += [ex.submit("text.shout", "") for _ in range(2)]
    futures += [emails.submit("text.shout", "hi") for _ in range(3)]
    futures += [emails.submit("text.shout", "")]
    done, pending = concurrent.futures.wait(futures, timeout=30)
    assert not pending
    assert sum(f.exception() is not None for f in done) == 3
    return idle


def check_figures(samples: Samples, workers: int) -> None:
    """What the workload must show, however the metrics were served."""
    assert value(samples, "squall_router_up") == 1
    for queue, outcomes in EXPECTED.items():
        for (function, outcome), count in outcomes.items():
            labels = {"queue": queue, "function": function, "outcome": outcome}
            assert value(samples, "squall_tasks_total", **labels) == count, labels
        ran = sum(outcomes.values())
        for histogram in ("squall_task_runtime_seconds", "squall_task_wait_seconds"):
            assert value(samples, f"{histogram}_count", queue=queue) == ran, (histogram, queue)
            inf = value(samples, f"{histogram}_bucket", queue=queue, le="+Inf")
            assert inf == ran
        assert value(samples, "squall_tasks_submitted_total", queue=queue) == ran
        assert value(samples, "squall_queue_depth", queue=queue) == 0
    assert value(samples, "squall_queue_depth", queue="idle") == IDLE
    assert value(samples, "squall_tasks_submitted_total", queue="idle") == IDLE
    assert value(samples, "squall_task_wait_seconds_count", queue="idle") is None  # none started
    assert value(samples, "squall_workers", state="up") == workers
    assert value(samples, "squall_workers", state="lost") == 0
    assert value(samples, "squall_worker_slots", state="busy") == 0
    assert value(samples, "squall_worker_slots", state="free") == workers * 10
    assert value(samples, "squall_redeliveries_total") == 0
    assert (value(samples, "squall_clients") or 0) >= 1
    assert (value(samples, "squall_router_process_resident_memory_bytes") or 0) > 1 << 20
    assert value(samples, "squall_router_process_cpu_seconds_total") is not None
    assert (value(samples, "squall_router_process_start_time_seconds") or 0) > 1.6e9
    assert (value(samples, "squall_router_process_open_fds") or 0) > 0


def test_gateway_metrics_count_tasks_by_queue_and_outcome(cluster: Cluster) -> None:
    cluster.start_router()
    start_node(cluster)
    api = start_gateway(cluster)
    with cluster.executor() as ex:
        idle = run_workload(ex)
        status, content_type, text = scrape(api.url + "/metrics")
        for future in idle:
            future.cancel()
    assert status == 200 and content_type.startswith("text/plain; version=")
    samples, types = parse(text)
    check_figures(samples, workers=2)
    assert types["squall_tasks"] == "counter"
    assert types["squall_task_runtime_seconds"] == "histogram"
    assert types["squall_queue_depth"] == "gauge"
    assert "# HELP squall_task_wait_seconds Seconds each task waited" in text
    assert value(samples, "process_resident_memory_bytes") is None  # the gateway's: not here

    assert cluster.router is not None
    cluster.router.stop()  # a router that does not answer: still a 200, saying so
    status, _, text = scrape(api.url + "/metrics")
    samples, _ = parse(text)
    assert status == 200 and value(samples, "squall_router_up") == 0
    assert value(samples, "squall_workers", state="up") is None


def test_a_router_serves_its_own_metrics_with_metrics_bind(cluster: Cluster) -> None:
    port = free_port()
    router = cluster.start_router("--metrics-bind", f"127.0.0.1:{port}")
    start_node(cluster, processes=1)
    url = f"http://127.0.0.1:{port}/metrics"
    with cluster.executor() as ex:
        idle = run_workload(ex)

        def settled() -> Samples | None:  # the snapshot is taken at each heartbeat
            samples, _ = parse(scrape(url)[2])
            ran = value(samples, "squall_task_runtime_seconds_count", queue="emails")
            return samples if ran == sum(EXPECTED["emails"].values()) else None

        samples = wait_for(settled, 10, "the router's metrics show the tasks run")
        for future in idle:
            future.cancel()
        check_figures(samples, workers=1)
    assert (value(samples, "process_resident_memory_bytes") or 0) > 1 << 20
    assert value(samples, "process_cpu_seconds_total") is not None
    assert value(samples, "process_open_fds") is not None
    assert "metrics served" in router.output() and f"127.0.0.1:{port}/metrics" in router.output()


def test_a_public_metrics_bind_is_refused_without_insecure(tmp_path: Path) -> None:
    refused = subprocess.run(
        [
            *(sys.executable, "-m", "squall", "router"),
            *("--bind", f"ipc://{tmp_path}/router", "--metrics-bind", "0.0.0.0:9191"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert "refusing to serve metrics on 0.0.0.0:9191" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_gateway_metrics_need_a_token_when_the_api_does(cluster: Cluster, tmp_path: Path) -> None:
    secret = tokens.create("scraper", str(tmp_path / "tokens"))
    cluster.start_router()
    api = start_gateway(cluster, "--tokens", str(tmp_path / "tokens"))
    status, _, body = scrape(api.url + "/metrics")
    assert status == 401 and '"unauthorized"' in body
    status, _, text = scrape(api.url + "/metrics", token=secret)
    assert status == 200 and value(parse(text)[0], "squall_router_up") == 1
