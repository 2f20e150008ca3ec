"""What CurveZMQ costs: no-op throughput and round-trip latency with and without it, one run.

Both setups are the same real processes over TCP on loopback (a router and a node of 2 worker
processes, started with the ``squall`` command); the only difference is ``--auth``. Each figure
is the median of ``--runs`` runs after a warm-up.

Usage::

    .venv/bin/python benchmarks/curve.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import squall
from squall.auth import keygen


def echo(x: int) -> int:
    return x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_keys(root: Path) -> tuple[Path, Path, Path]:
    """Router auth dir, a client's key dir, a worker's key dir."""
    server, client, worker = root / "router", root / "client", root / "worker"
    keygen(server, "router")
    for home, name, allow in ((client, "client", "clients"), (worker, "worker", "workers")):
        public, _ = keygen(home, name)
        shutil.copy(server / "router.key", home)
        (server / allow).mkdir()
        shutil.copy(public, server / allow)
    return server, client, worker


def measure(
    auth: tuple[Path, Path, Path] | None, runs: int, tasks: int, calls: int
) -> dict[str, list[float]]:
    address = f"tcp://127.0.0.1:{free_port()}"
    squall_cmd = [sys.executable, "-m", "squall"]
    router_auth = ["--auth", str(auth[0])] if auth else ["--insecure"]
    worker_auth = ["--auth", str(auth[2])] if auth else []
    procs = [
        subprocess.Popen(
            [*squall_cmd, "router", "--bind", address, *router_auth], stderr=subprocess.DEVNULL
        )
    ]
    time.sleep(0.3)
    procs.append(
        subprocess.Popen(
            [*squall_cmd, "worker", "--connect", address, "--processes", "2", *worker_auth],
            stderr=subprocess.DEVNULL,
        )
    )
    figures: dict[str, list[float]] = {"throughput": [], "p50": []}
    try:
        options = {"auth": str(auth[1])} if auth else {}
        with squall.Executor(address, connect_timeout=30, **options) as ex:  # type: ignore[arg-type]
            while ex.stats()["workers"] < 2:
                time.sleep(0.05)
            for round_ in range(runs + 1):
                started = time.perf_counter()
                list(ex.map(echo, range(tasks)))
                throughput = tasks / (time.perf_counter() - started)
                latencies = []
                for i in range(calls):
                    t0 = time.perf_counter()
                    ex.submit(echo, i).result()
                    latencies.append(time.perf_counter() - t0)
                if round_:  # round 0 warms up
                    figures["throughput"].append(throughput)
                    figures["p50"].append(statistics.median(latencies) * 1e6)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs, tasks, calls = (1, 2000, 100) if args.quick else (args.runs, 20_000, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        keys = make_keys(Path(tmp))
        plain = measure(None, runs, tasks, calls)
        curve = measure(keys, runs, tasks, calls)
    print(f"CURVE vs plain TCP on loopback, median of {runs} runs after a warm-up\n")
    print("| figure | plain | CURVE | CURVE / plain |")
    print("| --- | ---: | ---: | ---: |")
    for name, unit in (("throughput", "tasks/s"), ("p50", "us")):
        p, c = statistics.median(plain[name]), statistics.median(curve[name])
        label = "no-op throughput" if name == "throughput" else "round trip p50"
        print(f"| {label} ({unit}) | {p:,.0f} | {c:,.0f} | {c / p:.2f} |")


if __name__ == "__main__":
    main()
