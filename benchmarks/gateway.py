"""HTTP calls through one squall gateway, side by side with Flower's API over Celery and Redis.

    .venv/bin/python benchmarks/http.py [--seconds 5] [--connections 64] [--runs 3]

For each system: a no-op function called by name over HTTP by a load generator holding
``--connections`` keep-alive connections, each calling in a loop for ``--seconds``: calls per
second and the p50/p99 latency of a call under that load; then one call at a time (p50/p99
of a lone call). squall: ``POST /v1/functions/bench.noop/calls?wait=10`` to ``squall http``,
with one router and one worker node of 2 processes. Celery: Flower's ``POST
/api/task/async-apply/bench.noop``, then ``GET /api/task/result/<id>`` until it is ready (what
a client of Flower's API does: it has no wait), with ``celery worker -P prefork -c 2`` and a
private ``redis-server``. Medians of ``--runs`` runs after a warm-up; the ratio is squall over
Celery in the same run. Prints a Markdown table. Needs ``pip install -e '.[bench,http]'``
and redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

TASKS = """
import squall
from celery import Celery

app = Celery("bench", broker="{redis}", backend="{redis}")

@squall.function("bench.noop")
def squall_noop():
    return None

@app.task(name="bench.noop")
def celery_noop():
    return None
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


class Stack:
    """Processes started for one system, stopped by PID."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(work / "stack.log", "ab")

    def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        full = {**os.environ, "PYTHONPATH": str(self.work), **(env or {})}
        self.procs.append(
            subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full)
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


async def load(
    call: Callable[[aiohttp.ClientSession], Awaitable[None]], connections: int, seconds: float
) -> tuple[float, list[float]]:
    """Calls per second and each call's latency, ``connections`` loops for ``seconds``."""
    connector = aiohttp.TCPConnector(limit=connections)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < end:
                started = time.perf_counter()
                await call(session)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


async def lone_calls(
    call: Callable[[aiohttp.ClientSession], Awaitable[None]], n: int
) -> list[float]:
    async with aiohttp.ClientSession() as session:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            await call(session)
            out.append(time.perf_counter() - started)
        return out


def squall_call(url: str) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
    endpoint = f"{url}/v1/functions/bench.noop/calls?wait=10"

    async def call(session: aiohttp.ClientSession) -> None:
        async with session.post(endpoint, json={}) as answer:
            body = await answer.json()
            assert answer.status == 200 and body["state"] == "succeeded", body

    return call


def flower_call(url: str) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
    apply = f"{url}/api/task/async-apply/bench.noop"

    async def call(session: aiohttp.ClientSession) -> None:
        async with session.post(apply, json={"args": []}) as answer:
            task_id = (await answer.json())["task-id"]
        pause = 0.001
        while True:
            async with session.get(f"{url}/api/task/result/{task_id}") as answer:
                if (await answer.json()).get("state") == "SUCCESS":
                    return
            await asyncio.sleep(pause)
            pause = min(0.02, pause * 2)

    return call


def start_squall(stack: Stack) -> str:
    address = f"ipc://{stack.work}/router"
    squall = [sys.executable, "-m", "squall"]
    stack.start(*squall, "router", "--bind", address)
    stack.start(
        *squall, "worker", "--connect", address, "--processes", "2", "--import", "bench_tasks"
    )
    port = free_port()
    stack.start(
        *squall,
        "http",
        "--connect",
        address,
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/health")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the worker said HELLO with the name
        with urllib.request.urlopen(f"{url}/v1/functions") as answer:
            if b"bench.noop" in answer.read():
                return url
        time.sleep(0.2)
    raise SystemExit("the squall worker did not come up")


def start_celery(stack: Stack, redis_port: int) -> str:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    stack.start(
        redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"
    )
    time.sleep(0.5)
    celery = [sys.executable, "-m", "celery", "-A", "bench_tasks:app"]
    stack.start(*celery, "worker", "-P", "prefork", "-c", "2", "--loglevel", "WARNING")
    port = free_port()
    stack.start(
        *celery,
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        env={"FLOWER_UNAUTHENTICATED_API": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthcheck")
    time.sleep(3)  # the worker joins Flower's view
    return url


WRK_SCRIPT = (
    'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["Content-Type"] = "application/json"\n'
)


def wrk_rate(url: str, args: argparse.Namespace, work: Path) -> float:
    """Calls/s from wrk (a load generator in C, lighter than this Python one on 2 cores)."""
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    endpoint = f"{url}/v1/functions/bench.noop/calls?wait=10"
    command = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds:g}s", "-s", str(script)]
    out = subprocess.run([*command, endpoint], capture_output=True, text=True, check=True)
    if "Non-2xx" in out.stdout:
        raise SystemExit(f"wrk saw errors:\n{out.stdout}")
    line = next(line for line in out.stdout.splitlines() if line.startswith("Requests/sec"))
    return float(line.split()[1])


def measure(
    call: Callable[[aiohttp.ClientSession], Awaitable[None]], args: argparse.Namespace
) -> dict[str, list[float]]:
    asyncio.run(load(call, args.connections, 1.0))  # warm-up
    figures: dict[str, list[float]] = {"rate": [], "p50": [], "p99": [], "lone50": [], "lone99": []}
    for _ in range(args.runs):
        rate, latencies = asyncio.run(load(call, args.connections, args.seconds))
        latencies.sort()
        lone = sorted(asyncio.run(lone_calls(call, 300)))
        figures["rate"].append(rate)
        figures["p50"].append(latencies[len(latencies) // 2] * 1000)
        figures["p99"].append(latencies[int(len(latencies) * 0.99)] * 1000)
        figures["lone50"].append(lone[len(lone) // 2] * 1000)
        figures["lone99"].append(lone[int(len(lone) * 0.99)] * 1000)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", default="squall,celery")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="squall-http-bench-"))
    redis_port = free_port()
    (work / "bench_tasks.py").write_text(
        textwrap.dedent(TASKS).format(redis=f"redis://127.0.0.1:{redis_port}/0")
    )
    results: dict[str, dict[str, list[float]]] = {}
    for system in args.systems.split(","):
        stack = Stack(work)
        try:
            if system == "squall":
                url = start_squall(stack)
                results[system] = measure(squall_call(url), args)
                if shutil.which("wrk"):
                    rates = [wrk_rate(url, args, work) for _ in range(args.runs)]
                    results[system]["wrk"] = rates
            else:
                results[system] = measure(flower_call(start_celery(stack, redis_port)), args)
        finally:
            stack.stop()
        print(f"{system}: done", file=sys.stderr)
    med = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in results.items()}
    rows = [
        ("calls/s, 64 connections", "rate", "{:,.0f}/s", True),
        ("latency p50 under that load", "p50", "{:.1f} ms", False),
        ("latency p99 under that load", "p99", "{:.1f} ms", False),
        ("one call at a time, p50", "lone50", "{:.2f} ms", False),
        ("one call at a time, p99", "lone99", "{:.2f} ms", False),
    ]
    systems = list(med)
    print(
        f"HTTP calls of a no-op named function, median of {args.runs} runs "
        f"({args.seconds:g} s each, {args.connections} keep-alive connections)\n"
    )
    header = "| figure | " + " | ".join(systems)
    print(header + (" | squall ÷ celery |" if len(systems) == 2 else " |"))
    print("| --- |" + " ---: |" * (len(systems) + (1 if len(systems) == 2 else 0)))
    if "wrk" in med.get("squall", {}):
        rows.insert(1, ("calls/s, 64 connections, wrk (C) load", "wrk", "{:,.0f}/s", True))
    for label, key, fmt, higher in rows:
        if any(key not in med[s] for s in systems):
            cells = [fmt.format(med[s][key]) if key in med[s] else "n/a" for s in systems]
            print(f"| {label} | " + " | ".join(cells) + (" | |" if len(systems) == 2 else " |"))
            continue
        cells = [fmt.format(med[s][key]) for s in systems]
        if len(systems) == 2:
            a, b = med[systems[0]][key], med[systems[1]][key]
            ratio = a / b if higher else b / a
            cells.append(f"{ratio:.1f}× {'faster' if ratio >= 1 else 'slower'}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
