"""Client memory over a long run: RSS after each batch of no-op tasks, and after idling.

Answers "does a client that has run millions of tasks keep growing?" (issue #11, item 13). The
client runs ``--tasks`` no-op tasks through the embedded default in batches of ``--batch``,
printing its RSS after each batch; then it idles long enough for the I/O thread's trimmer
(squall.memory) to hand freed memory back, and prints the RSS again.

Usage::

    .venv/bin/python benchmarks/soak.py [--tasks 2000000] [--batch 100000]
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import squall
from squall import memory


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    args = parser.parse_args()
    with squall.Executor(processes=2) as ex:
        sum(ex.map(abs, range(10_000)))
        print(f"after warm-up: {rss_mb():.0f} MB")
        for done in range(args.batch, args.tasks + 1, args.batch):
            sum(ex.map(abs, range(args.batch)))
            print(f"{done:>10,} tasks: {rss_mb():.0f} MB", flush=True)
        time.sleep(memory.TRIM_EVERY + 1)
        print(f"idle {memory.TRIM_EVERY + 1:g} s: {rss_mb():.0f} MB")
        gc.collect()  # also empties CPython's free lists: what is left is really in use
        if memory._malloc_trim is not None:
            memory._malloc_trim(0)
        print(f"after gc.collect() and a trim: {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
