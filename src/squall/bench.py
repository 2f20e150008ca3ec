"""``squall bench``: squall's own figures in under a minute, on the embedded default or a router.

The full comparison with other systems is ``benchmarks/compare.py``; this is the quick check a
user runs on their own machine or cluster: no-op throughput, an I/O-bound fan-out, round-trip
latency and stream throughput, each the median of a few runs after a warm-up.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from squall.client.executor import Executor


def _echo(x: int) -> int:
    return x


def _nap(seconds: float) -> None:
    time.sleep(seconds)


def _count(n: int) -> Iterator[int]:
    yield from range(n)


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def _time(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def run(address: str | None, quick: bool, runs: int, *, insecure: bool = False) -> list[Figure]:
    """Measure; return the figures (each: every run's value).

    ``insecure`` lets the client talk to a remote router without keys (``squall bench
    --insecure``), as ``Executor(insecure=True)`` does.
    """
    from tqdm import tqdm

    scale = 0.2 if quick else 1.0
    noop, sleeps, calls, items = (int(n * scale) for n in (20_000, 10_000, 1_000, 100_000))
    figures = [
        Figure(f"no-op throughput ({noop:,} tasks via map)", "tasks/s", []),
        Figure(f"I/O fan-out ({sleeps:,} x 100 ms sleeps)", "s", []),
        Figure(f"round trip p50 ({calls:,} sequential submits)", "us", []),
        Figure(f"round trip p99 ({calls:,} sequential submits)", "us", []),
        Figure(f"stream ({items:,} small values)", "values/s", []),
    ]
    options: dict[str, object] = {"insecure": True} if insecure else {}
    if not address:
        options["concurrency"] = 10_000
    progress = tqdm(
        total=runs + 1,
        desc="squall bench",
        unit="round",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    )
    with Executor(address, **options) as ex:  # type: ignore[arg-type]
        for round_ in range(runs + 1):  # round 0 warms up
            values = [
                noop / _time(lambda: list(ex.map(_echo, range(noop)))),
                _time(lambda: list(ex.map(_nap, [0.1] * sleeps))),
            ]
            latencies = []
            for i in range(calls):
                started = time.perf_counter()
                ex.submit(_echo, i).result()
                latencies.append((time.perf_counter() - started) * 1e6)
            latencies.sort()
            values += [latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]]
            values.append(items / _time(lambda: sum(1 for _ in ex.stream(_count, items))))
            if round_:
                for figure, value in zip(figures, values, strict=True):
                    figure.runs.append(value)
            progress.update()
    progress.close()
    return figures


def table(figures: list[Figure], where: str) -> str:
    lines = [
        f"squall bench on {where}: median of {len(figures[0].runs)} runs after a warm-up",
        "",
        "| figure | median | min | max | unit |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {f.median:,.0f} | {min(f.runs):,.0f} | {max(f.runs):,.0f} | {f.unit} |"
            if f.unit != "s"
            else f"| {f.name} | {f.median:.3f} | {min(f.runs):.3f} | {max(f.runs):.3f} | {f.unit} |"
        )
    return "\n".join(lines)
