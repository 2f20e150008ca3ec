"""Whole messages on a ZeroMQ socket, at the cost of libzmq's calls alone.

pyzmq's ``send_multipart`` and ``recv_multipart`` are Python loops around its Cython methods:
per frame they check the frame's type, combine enum flags (``SNDMORE | flags`` builds an
``enum.Flag``, about a microsecond) and, when receiving, ask ``getsockopt(RCVMORE)``. Measured
here that is 4-7 us a frame sent and received, against 1-2 us for the Cython calls alone. squall
sends a frame per task payload, so each peer paid it several times per task. These functions
call the Cython methods directly, with plain int flags, and read ``Frame.more`` instead of
asking the socket.

They bypass zmq.green's waiting as well: on a green socket, use them only without blocking
(the default), and let the green socket see what they did with :func:`rearm` after a batch.
The protocol's messages themselves are :mod:`squall.protocol`'s; this moves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import zmq
from zmq.backend import Socket as _CSocket

_send = _CSocket.send
_recv = _CSocket.recv
_get = _CSocket.get
_MORE = int(zmq.SNDMORE)
#: never wait: raise ``zmq.Again`` when the socket will not take or give a message now
NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)


def send(
    socket: zmq.Socket[Any], frames: Sequence[Any], peer: bytes | None = None, flags: int = NOBLOCK
) -> None:
    """Send ``frames`` as one message (after ``peer``, a ROUTER's routing id, if given).

    Raises ``zmq.Again`` (nothing sent) when the socket will not take it now, and the
    ZMQError of a ROUTER_MANDATORY send to a gone peer. Only the first frame can fail:
    libzmq takes the rest of a message whose first frame it took.
    """
    more = flags | _MORE
    if peer is not None:
        _send(socket, peer, more, False, False)
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(socket, frame, flags if i == last else more, False, False)


def recv(
    socket: zmq.Socket[Any], flags: int = NOBLOCK, first: zmq.Frame | None = None
) -> list[zmq.Frame]:
    """One whole message, as ``zmq.Frame`` objects (not copied); ``zmq.Again`` if none is
    there. Its later frames are there once the first is: libzmq delivers messages whole.

    ``first``: its first frame, already received (by a green socket's waiting ``recv``).
    """
    frame: zmq.Frame = _recv(socket, flags, False, False) if first is None else first
    frames = [frame]
    while frame.more:
        frame = _recv(socket, flags, False, False)
        frames.append(frame)
    return frames


def readable(socket: zmq.Socket[Any]) -> bool:
    """Whether a message waits to be read (asking also lets libzmq process its commands, so
    the socket's descriptor will signal the next arrival)."""
    events = cast("int", _get(socket, _EVENTS))
    return bool(events & zmq.POLLIN)


def rearm(socket: zmq.Socket[Any]) -> None:
    """After sending or receiving with these functions on a zmq.green socket: let it look at
    its state again (its ``get(EVENTS)`` does), so that a greenlet waiting to read is woken
    for a message these calls' processing of libzmq's commands has already taken in."""
    socket.get(zmq.EVENTS)
