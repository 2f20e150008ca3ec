"""A worker process's last words on a fatal signal: which task was running when it crashed.

A task that segfaults (a buggy C extension, ``ctypes`` misuse) kills its process and every
task in it. Only one of them was running at that instant: the greenlet on the main thread.
To charge only that task a death rather than all of them, the process names it before dying:
a handler for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT, installed through libc (Python's own
handlers run later, between bytecodes, which a crashed thread never reaches), finds the task on
the main thread's stack (as the watchdog does for a blocked hub) and writes it on the status
pipe to the node, then lets the signal kill the process as it would have.

Running Python in a crashed process is best effort: the handler first restores the default
action of every fatal signal and arms a two-second alarm, so a handler that crashes or hangs
still ends the process, with no culprit named; the node then cannot tell who was at fault. A
crash on another thread (the watchdog's, a library's) names no task either. A task's forked
child inherits neither: it has the default actions and no status pipe, so its crash is not taken
for its worker's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gevent import monkey

from squall import libc as c_library
from squall.runner.watchdog import STATUS, StatusKind

FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)
#: seconds the handler may take before SIGALRM ends the process anyway
LAST_WORDS_TIMEOUT = 2

_native_ident = monkey.get_original("_thread", "get_ident")
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)
#: the installed handler, kept alive for as long as libc may call it
_installed: list[Any] = []


def install(status_fd: int | None, blame: Callable[[], int | None]) -> None:
    """On a fatal signal, write (signal, ``blame()``) on ``status_fd``, then die of it.

    Args:
        status_fd: the status pipe to the node; None: nothing is installed.
        blame: returns the task the main thread is running (called in the handler).
    """
    if status_fd is None or not sys.platform.startswith("linux") or _installed:
        return
    libc = c_library.load()
    if libc is None:
        return
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal.restype = ctypes.c_void_p
    main_thread = _native_ident()

    def last_words(signum: int) -> None:
        for fatal in (*FATAL_SIGNALS, signal.SIGALRM):
            libc.signal(int(fatal), None)  # SIG_DFL: a second fault ends the process
        libc.alarm(LAST_WORDS_TIMEOUT)
        culprit = blame() if _native_ident() == main_thread else None
        try:
            os.write(status_fd, STATUS.pack(StatusKind.CRASH, signum, culprit or 0))
        except OSError:
            pass
        # A fault happens again when the handler returns, now with the default action; a
        # signal that was sent (kill, abort) is sent again, and delivered once this returns.
        os.kill(os.getpid(), signum)

    def forget_in_forked_child() -> None:
        for fatal in FATAL_SIGNALS:
            libc.signal(int(fatal), None)
        try:
            os.close(status_fd)
        except OSError:
            pass

    handler = _HANDLER(last_words)
    _installed.append(handler)
    os.register_at_fork(after_in_child=forget_in_forked_child)
    for fatal in FATAL_SIGNALS:
        libc.signal(int(fatal), ctypes.cast(handler, ctypes.c_void_p))
