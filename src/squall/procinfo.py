"""This process as the operating system sees it (Linux /proc), without importing anything
heavy: the worker process reads it every heartbeat, and its idle memory is a target."""

from __future__ import annotations

import os


def resident_bytes() -> int | None:
    """This process's resident set size, from /proc/self/statm (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
