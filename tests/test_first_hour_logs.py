"""Whole log lines, and client records in the application's logging (issue 12, items 9, 12).

The processes of a worker node share one stderr: each line must reach it in one write, or two
processes' lines glue together and JSON stops parsing. In an application, squall's client-side
events are ``logging`` records, so whatever logging configuration the application has applies.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Cluster, wait_for
from squall import log

pytestmark = pytest.mark.timeout(240)


def test_json_lines_of_an_8_process_node_under_repeated_sigterm_all_parse(
    cluster: Cluster,
) -> None:
    cluster.start_router()
    nodes = []
    for _ in range(5):
        node = cluster.start_workers(8, 100, "--log-json")
        node.stop(grace=20)
        wait_for(lambda: cluster.stats()["workers"] == 0, 20, "the node's workers left")
        nodes.append(node)
    lines = [line for node in nodes for line in node.output().splitlines()]
    broken = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            broken.append(line)
    assert not broken, f"{len(broken)} of {len(lines)} lines do not parse: {broken[:5]}"
    pids = {json.loads(line).get("pid") for line in lines}
    assert len(pids) >= 5 * 9  # every node and every worker process logged


def test_line_writer_writes_each_line_in_one_write(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        from squall import log
        log.configure(json=True, process="probe")
        log.get_logger("probe").info("hello", size=4000, text="x" * 4000)
    """)
    traced = tmp_path / "trace"
    strace = subprocess.run(["which", "strace"], capture_output=True, text=True).stdout.strip()
    if not strace:
        pytest.skip("strace is not installed")
    ran = subprocess.run(
        [strace, "-f", "-e", "trace=write", "-o", str(traced), sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    writes = [w for w in traced.read_text().splitlines() if "write(2," in w]
    assert len(writes) == 1, writes  # the whole line, newline included, at once
    assert json.loads(ran.stderr)["event"] == "hello"


def test_field_rendering() -> None:
    assert log._field("router", "tcp://host:1") == "router=tcp://host:1"
    assert log._field("pending", 3) == "pending=3"
    assert log._field("error", "a b") == "error='a b'"


CLIENT = textwrap.dedent("""
    import json, logging, os, sys, time
    import squall

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logging.getLogger().addHandler(Keep())
    logging.getLogger().setLevel(logging.INFO)
    ex = squall.Executor(sys.argv[1], connect_timeout=10)
    assert ex.submit(abs, -1).result(timeout=30) == 1
    print("ready", flush=True)
    sys.stdin.readline()  # the test stops the router, then says so

    def warned():
        return [r for r in records if r.name.startswith("squall") and r.levelno >= logging.WARNING]

    deadline = time.monotonic() + 30
    while not warned() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps([
        {"name": r.name, "level": r.levelname, "message": r.getMessage(),
         "fields": getattr(r, "squall", None)}
        for r in warned()
    ]), flush=True)
    os._exit(0)
""")


def test_client_records_reach_the_applications_logging_handler(cluster: Cluster) -> None:
    router = cluster.start_router()
    cluster.start_workers(1)
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, cluster.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        ready = select.select([client.stdout], [], [], 60)[0]
        assert ready and client.stdout.readline().strip() == "ready", "the client did not start"
        router.stop()  # the client logs a warning: the router went away
        client.stdin.write("stopped\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    records = json.loads(out)
    assert records, f"no squall record reached the handler; stderr: {err}"
    record = records[0]
    assert record["name"].startswith("squall.client")
    assert "router" in record["message"] and cluster.address in record["message"]
    assert record["fields"]["router"] == cluster.address
    # It went to the application's handler, not to a printer of squall's own.
    assert "router" not in err, err
