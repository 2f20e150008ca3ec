"""The C library of this process, for the few calls the standard library does not wrap
(``prctl``, ``signal`` for a last-words handler, ``malloc_trim``).

Loaded as the process's own symbols (``dlopen(NULL)``), not found with ``ctypes.util``:
``find_library`` runs ``ldconfig`` (or gcc) in a subprocess to look, and imports ``shutil``
with ``bz2`` and ``lzma``, about 2 MB resident in every worker process.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def load() -> ctypes.CDLL | None:
    """The C library, or None where it cannot be loaded (callers do without)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
