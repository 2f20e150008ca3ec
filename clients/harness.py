"""A real squall stack for the clients' tests: router, worker node, HTTP gateway.

    python clients/harness.py [--no-tokens]

Starts a router on a private ipc socket, a worker node serving ``clients/fixtures`` by name
(``math.add``, ``text.shout``, ``count.up``, ``sleep.echo``, ``hooks.receive``), publishes
``published.double`` (a function published by value), and a gateway on a free loopback port
with a bearer token and a webhook secret. Prints one JSON line once all answer::

    {"url": "http://127.0.0.1:PORT", "token": "...", "webhook_secret": "...", "pid": N}

then runs until its stdin closes or it gets SIGTERM/SIGINT, and stops what it started, by PID.
A language's test runner starts this, reads the line, and closes stdin when done.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"harness: {what} did not come up within {timeout:.0f} s")


def main() -> int:
    tokens = "--no-tokens" not in sys.argv
    work = Path(tempfile.mkdtemp(prefix="squall-clients-"))
    address = f"ipc://{work}/router"
    logs = open(work / "stack.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(HERE / "fixtures")}
    squall = [sys.executable, "-m", "squall"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*squall, *args], stdout=logs, stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    token = ""
    extra: list[str] = []
    if tokens:
        made = subprocess.run(
            [*squall, "token", "create", "clients", "--out", str(work / "tokens")],
            capture_output=True, text=True, check=True, env=env,
        )
        token = made.stdout.strip().splitlines()[-1]
        extra = ["--tokens", str(work / "tokens")]
    secret = "harness-webhook-secret"
    start("router", "--bind", address, "--data", str(work / "data"))
    start("worker", "--connect", address, "--processes", "1", "--concurrency", "200",
          "--import", "squall_fixtures")
    port = free_port()
    start("http", "--connect", address, "--bind", f"127.0.0.1:{port}",
          "--webhook-secret", secret, *extra)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as answer:
            return bool(json.loads(answer.read())["workers"] >= 1)

    wait_until(healthy, 60, "the gateway and a worker")
    publish = (
        "import squall\n"
        f"with squall.Executor({address!r}) as ex:\n"
        "    ex.publish('published.double', lambda x: 2 * x)\n"
    )
    subprocess.run([sys.executable, "-c", publish], check=True, env=env, timeout=60)
    print(json.dumps({"url": url, "token": token, "webhook_secret": secret, "pid": os.getpid(),
                      "logs": str(work / "stack.log")}), flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), stop()), daemon=True).start()
    while all(p.poll() is None for p in procs) or stopping.is_set():
        time.sleep(0.5)
    print("harness: a squall process exited; see " + str(work / "stack.log"), file=sys.stderr)
    stop()
    return 1


if __name__ == "__main__":
    sys.exit(main())
