"""Prometheus metrics: the router's ``metrics`` answer as Prometheus metric families.

Two places expose them. The HTTP gateway's ``GET /metrics`` asks the router at each scrape
(``AsyncExecutor.metrics``) and renders the answer with :func:`exposition`. A router run with
``--metrics-bind HOST:PORT`` serves them itself (:func:`serve`): its socket loop is one
thread and its state is not thread-safe, so the loop leaves a fresh snapshot of the answer at
each heartbeat and the HTTP thread only ever reads that snapshot, never the state.

The figures are counted by the router (``squall.router.monitor``); this module only names
them the Prometheus way. It needs ``prometheus_client`` (the ``metrics`` and ``http`` extras):
importing it without the library raises :class:`~squall.errors.ConfigError` with the one line
that says what to install.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from squall.errors import ConfigError

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        PlatformCollector,
        ProcessCollector,
        generate_latest,
        start_http_server,
    )
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError:
    raise ConfigError(
        "Prometheus metrics need prometheus_client: pip install 'squall[metrics]'"
    ) from None

from squall.log import get_logger

log = get_logger(__name__)

#: seconds the gateway waits for the router's answer before a scrape says squall_router_up 0
#: (below Prometheus's default scrape timeout of 10 s, so the scrape itself does not fail)
ROUTER_TIMEOUT = 3.0

#: what ``squall_router_up`` says
_UP_HELP = (
    "1 when the router answered for this scrape, 0 when it did not (then no other squall_ "
    "figure is given)"
)


class RouterCollector(Collector):
    """A custom collector: at each collection, the metric families of ``source()``.

    Args:
        source: returns the router's ``metrics`` answer, or None when there is none (the
            router did not answer; or, in the router itself, no heartbeat has passed yet).
    """

    def __init__(self, source: Callable[[], Mapping[str, Any] | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from families(self.source())


def families(answer: Mapping[str, Any] | None) -> list[Metric]:
    """The metric families of one ``metrics`` answer (docs/http.md, "Metrics")."""
    up = GaugeMetricFamily("squall_router_up", _UP_HELP, value=0 if answer is None else 1)
    if answer is None:
        return [up]
    tasks = CounterMetricFamily(
        "squall_tasks",
        "Tasks that ended, by queue, function name and outcome (succeeded, failed, "
        "cancelled, expired)",
        labels=["queue", "function", "outcome"],
    )
    for queue, function, outcome, count in answer.get("tasks", ()):
        tasks.add_metric([queue, function, outcome], count)
    return [
        up,
        tasks,
        _histogram(
            "squall_task_runtime_seconds",
            "Seconds each task ran on its worker, from start to outcome, by queue",
            answer.get("runtime", {}),
        ),
        _histogram(
            "squall_task_wait_seconds",
            "Seconds each task waited from queued (or due, when delayed) to started on a "
            "worker: the schedule-to-start latency, by queue",
            answer.get("wait", {}),
        ),
        _by_queue(
            GaugeMetricFamily,
            "squall_queue_depth",
            "Tasks queued, ready to run, that no worker has started yet, by queue",
            answer.get("queue_depth", {}),
        ),
        _by_queue(
            GaugeMetricFamily,
            "squall_tasks_scheduled",
            "Tasks held for later (delay=, at=, or a schedule) that are not due yet, by queue",
            answer.get("scheduled", {}),
        ),
        _by_queue(
            GaugeMetricFamily,
            "squall_tasks_running",
            "Tasks running on workers now, by queue",
            answer.get("running", {}),
        ),
        _by_queue(
            CounterMetricFamily,
            "squall_tasks_submitted",
            "Tasks submitted to the router since it started, by queue",
            answer.get("submitted", {}),
        ),
        _by_label(
            GaugeMetricFamily,
            "squall_workers",
            "Worker processes by state: up, blocked (a task holds its event loop; it gets no "
            "new tasks), draining (finishing its tasks, gets no new ones), lost (recently "
            "gone without saying goodbye; the router remembers the last 100 gone workers)",
            "state",
            answer.get("workers", {}),
        ),
        _by_label(
            GaugeMetricFamily,
            "squall_worker_slots",
            "Task slots of the connected worker processes: busy (running a task) or free",
            "state",
            answer.get("slots", {}),
        ),
        _by_queue(
            CounterMetricFamily,
            "squall_task_retries",
            "Attempts that failed and ran again on their worker (the retries option), by queue",
            answer.get("retries", {}),
        ),
        CounterMetricFamily(
            "squall_redeliveries",
            "Tasks sent again to another worker after theirs was lost, since the router started",
            value=answer.get("redeliveries", 0),
        ),
        GaugeMetricFamily(
            "squall_clients",
            "Clients (executors, gateways) connected to the router",
            value=answer.get("clients", 0),
        ),
        *_router_process(answer.get("router") or {}),
    ]


def _histogram(name: str, help_text: str, by_queue: Mapping[str, Any]) -> Metric:
    family = HistogramMetricFamily(name, help_text, labels=["queue"])
    for queue, histogram in by_queue.items():
        buckets = [(_le(bound), count) for bound, count in histogram["buckets"]]
        family.add_metric([queue], buckets, histogram["sum"])
    return family


def _le(bound: float | str) -> str:
    """A bucket's upper bound as Prometheus writes it ("+Inf" for the last)."""
    value = float(bound)  # float("+Inf") is inf
    return "+Inf" if math.isinf(value) else repr(value)


def _by_queue(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    help_text: str,
    values: Mapping[str, float],
) -> Metric:
    return _by_label(kind, name, help_text, "queue", values)


def _by_label(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    help_text: str,
    label: str,
    values: Mapping[str, float],
) -> Metric:
    family = kind(name, help_text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _router_process(router: Mapping[str, Any]) -> Iterator[Metric]:
    """The router process's own figures, named as ProcessCollector names a process's, under
    ``squall_router_`` (the gateway scraped is another process; these are the router's)."""
    if router.get("rss") is not None:
        yield GaugeMetricFamily(
            "squall_router_process_resident_memory_bytes",
            "Resident memory of the router process, bytes",
            value=router["rss"],
        )
    if router.get("cpu_seconds") is not None:
        yield CounterMetricFamily(
            "squall_router_process_cpu_seconds",
            "CPU time the router process used, user and system, seconds",
            value=router["cpu_seconds"],
        )
    if router.get("started") is not None:
        yield GaugeMetricFamily(
            "squall_router_process_start_time_seconds",
            "When the router process started, seconds since the Unix epoch",
            value=router["started"],
        )
    if router.get("open_fds") is not None:
        yield GaugeMetricFamily(
            "squall_router_process_open_fds",
            "Open file descriptors of the router process",
            value=router["open_fds"],
        )


def exposition(answer: Mapping[str, Any] | None) -> tuple[bytes, str]:
    """One ``metrics`` answer (None: the router did not answer) in the Prometheus text
    format, and its content type: the body of the gateway's ``GET /metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(lambda: answer))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsServer:
    """The router's own metrics endpoint: an HTTP server thread over one registry."""

    def __init__(self, bind: str, source: Callable[[], Mapping[str, Any] | None]) -> None:
        host, _, port = bind.rpartition(":")
        host = host.strip("[]")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RouterCollector(source))
        ProcessCollector(registry=registry)  # the process_* figures of this (router) process
        PlatformCollector(registry=registry)
        try:
            self._server, self._thread = start_http_server(int(port), host, registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on --metrics-bind {bind}: {exc.strerror or exc}"
            ) from None
        bound_port = self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        self.endpoint = f"http://{shown}:{bound_port}/metrics"
        log.info("metrics served", endpoint=self.endpoint)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(bind: str, source: Callable[[], Mapping[str, Any] | None]) -> MetricsServer:
    """Serve the families of ``source()`` and this process's own at ``http://BIND/metrics``,
    from a daemon thread. ``source`` is called in that thread: it must only read (the router
    hands it the snapshot its loop left, never its live state).

    Raises:
        ConfigError: the address cannot be bound (one line, for the command line).
    """
    return MetricsServer(bind, source)
