"""What watching the fleet costs: no-op throughput with and without an event subscriber.

The router records every task (its history, counters and histograms) whether anyone looks or
not, and builds events only while a client subscribes (``ex.events()``, the dashboard). This
runs ``ex.map(echo, range(N))`` on one embedded router and worker node, alternating rounds
with no subscriber and with one (a separate process reading every event, as a dashboard's
gateway would), and prints the medians and their ratio. The issue's target: a subscriber costs
at most 10% of no-op throughput.

For the cost of the recording itself, run this on the old commit and the new one in the same
session (``git worktree add /tmp/old COMMIT``; ``PYTHONPATH=/tmp/old/src``) with
``--no-subscriber``.

Usage::

    .venv/bin/python benchmarks/events.py [--tasks N] [--rounds R] [--no-subscriber]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

import squall


def echo(x: Any) -> Any:
    return x


def subscriber(address: str, ready: Any, stop: Any, counted: Any) -> None:
    """Read every event until told to stop; count them."""
    with squall.Executor(address, connect_timeout=10) as ex:
        events = ex.events(timeout=0.2)
        ready.set()
        n = 0
        while not stop.is_set():
            for _ in events:
                n += 1
        events.close()
        counted.value = n


def throughput(ex: squall.Executor, n: int) -> float:
    started = time.perf_counter()
    results = list(ex.map(echo, range(n)))
    elapsed = time.perf_counter() - started
    assert results == list(range(n))
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-subscriber", action="store_true", help="only the plain rounds")
    args = parser.parse_args()
    plain: list[float] = []
    watched: list[float] = []
    events = 0
    with squall.Executor() as ex:
        throughput(ex, args.tasks)  # warm up: bodies cached, processes hot
        context = multiprocessing.get_context("spawn")
        for _ in range(args.rounds):
            plain.append(throughput(ex, args.tasks))
            if args.no_subscriber:
                continue
            ready, stop = context.Event(), context.Event()
            counted = context.Value("q", 0)
            reader = context.Process(target=subscriber, args=(ex.address, ready, stop, counted))
            reader.start()
            ready.wait(30)
            watched.append(throughput(ex, args.tasks))
            time.sleep(0.5)  # the last events reach the reader
            stop.set()
            reader.join(30)
            events += counted.value
    p = statistics.median(plain)
    runs = ", ".join(f"{x:,.0f}" for x in plain)
    print(f"no-op tasks/s, no subscriber: median {p:,.0f} (runs {runs})")
    if watched:
        w = statistics.median(watched)
        print(
            f"no-op tasks/s, one subscriber: median {w:,.0f} "
            f"(runs {', '.join(f'{x:,.0f}' for x in watched)}); "
            f"ratio {w / p:.2f}; events read {events:,} "
            f"({events / (args.rounds * args.tasks):.1f} per task)"
        )


if __name__ == "__main__":
    main()
