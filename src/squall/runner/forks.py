"""What becomes of a task's ``os.fork()`` child: it ends with its worker and never runs squall.

A forked child is a copy of the whole worker process: its hub, the receiver and sender
greenlets, every other task's greenlet, the router socket. Left alone, a child that lets the
hub run (any gevent-patched sleep or I/O) or whose task function returns would go on running
squall's loop and its neighbours' tasks, and it would outlive the worker. So, in the child, right
after the fork (:func:`os.register_at_fork`):

- ``PR_SET_PDEATHSIG`` (Linux) makes the kernel SIGKILL the child when its worker process ends,
  however it ends (the node also kills the worker's process group, which covers children made
  without a Python-level fork, such as ``subprocess``);
- the child gets a fresh, empty gevent hub: the greenlets copied from the worker stay suspended
  forever, so no squall greenlet and no other task runs in the child, while the child's own
  code can still sleep and do I/O;
- should anything switch back into the worker's hub (the task function returned in the child,
  or a copied greenlet ended), the child ``os._exit()``\\ s instead.

``subprocess`` and ``multiprocessing`` work as usual in tasks: an exec'd program is not
affected, and a multiprocessing child ends through its own ``os._exit``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import greenlet
from gevent import _hub_local, monkey

from squall import libc
from squall.log import get_logger

log = get_logger(__name__)

PR_SET_PDEATHSIG = 1
#: exit status of a forked child that went back to squall's loop after its task returned
CHILD_RETURNED = 0
CHILD_RAISED = 1

#: True in a forked child of a worker process (read on the task path: a plain global)
in_child = False

_state: dict[str, Any] = {}
_native_ident = monkey.get_original("_thread", "get_ident")


def install() -> None:
    """Make this process's forked children end with it and never run squall (call once)."""
    _state["worker_pid"] = os.getpid()
    _state["main_thread"] = _native_ident()
    _state["prctl"] = _load_prctl()
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def leave_child(code: int) -> None:
    """In a forked child, end the process with ``code`` rather than return into squall."""
    if in_child:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    # No C library (or no prctl in it): the process group still ends children.
    return getattr(libc.load(), "prctl", None)


def _before_fork() -> None:
    # A parent-death signal fires when the forking *thread* ends, so it is set only for forks
    # from the main thread (the hub's); others rely on the node killing the process group.
    _state["forked_from_main"] = _native_ident() == _state["main_thread"]


def _after_fork_in_child() -> None:
    global in_child
    in_child = True
    _die_with_the_worker()
    _reset_signals()
    _detach_hub()


def _die_with_the_worker() -> None:
    prctl = _state.get("prctl")
    if prctl is None or not _state.get("forked_from_main"):
        return
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != _state["worker_pid"]:  # it died between the fork and the prctl
        os._exit(CHILD_RAISED)


def _reset_signals() -> None:
    """The worker's signal handlers live in its hub, which the child never runs again."""
    for signum, handler in (
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGCHLD, signal.SIG_DFL),
    ):
        try:
            signal.signal(signum, handler)
        except (OSError, ValueError):
            pass


def _detach_hub() -> None:
    old = _hub_local.get_hub_if_exists()
    if old is None:
        return
    # A loop of its own (not libev's default loop, which holds the worker's watchers), picked
    # up by the hub gevent creates on the child's first blocking call.
    _hub_local.set_hub(None)
    _hub_local.set_loop(type(old.loop)(default=False))

    def never_back_into_the_worker(event: str, args: tuple[Any, Any]) -> None:
        if args[1] is old:
            leave_child(CHILD_RETURNED)

    greenlet.settrace(never_back_into_the_worker)
