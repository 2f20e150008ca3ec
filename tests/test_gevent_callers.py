"""gevent callers: under monkey-patching, waiting on a future blocks only its greenlet."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import gevent, json, time
    import squall

    def square(x):
        time.sleep(0.01)
        return x * x

    ticks = 0
    def ticker():
        global ticks
        while True:
            ticks += 1
            gevent.sleep(0.01)

    with squall.Executor(processes=2, concurrency=5000) as ex:
        beat = gevent.spawn(ticker)
        greenlets = [gevent.spawn(lambda i=i: ex.submit(square, i).result()) for i in range(5000)]
        gevent.joinall(greenlets, timeout=60)
        streamed = list(ex.stream(range, 100))
        done = [f.result() for f in squall.as_completed([ex.submit(square, 3)], timeout=10)]
        beat.kill()
    print(json.dumps({"results": [g.value for g in greenlets], "ticks": ticks,
                      "streamed": streamed, "done": done}))
""")


def test_thousands_of_greenlets_submit_and_wait() -> None:
    import json

    ran = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=100
    )
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    assert out["results"] == [i * i for i in range(5000)]
    assert out["streamed"] == list(range(100))
    assert out["done"] == [9]
    assert out["ticks"] > 5, "other greenlets kept running while futures were awaited"
