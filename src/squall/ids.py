"""Task ids: 16 bytes that sort by creation time, shown as 26 URL-safe characters.

The layout is ULID's: 48 bits of Unix time in milliseconds, then 80 random bits. Ids made in
the same millisecond by one process count up from the previous one, so they still sort in
creation order. The text form is Crockford's base32 (no I, L, O, U), case-insensitive.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

SIZE = 16
TEXT_SIZE = 26
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)} | {c.lower(): i for i, c in enumerate(_ALPHABET)}
_RANDOM_MAX = (1 << 80) - 1

_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def new_id() -> bytes:
    """A fresh id: the time now, then randomness (one more than the last, within one ms)."""
    global _last_ms, _last_random
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms <= _last_ms:  # the same millisecond (or the clock stepped back): count up
            ms = _last_ms
            _last_random += 1
            if _last_random > _RANDOM_MAX:  # 2**80 ids in one ms: borrow the next ms
                ms += 1
                _last_random = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            _last_random = int.from_bytes(os.urandom(10), "big") >> 1  # room to count up
        _last_ms = ms
        return ((ms << 80) | _last_random).to_bytes(SIZE, "big")


def for_key(key: str) -> bytes:
    """The id of the background task enqueued with unique key ``key``: the same on every
    client, so that the router holds one task per key (its first 48 bits are not a time)."""
    return hashlib.sha256(b"squall unique key\0" + key.encode()).digest()[:SIZE]


def to_text(raw: bytes) -> str:
    """The 26-character form of a 16-byte id."""
    if len(raw) != SIZE:
        raise ValueError(f"a task id has {SIZE} bytes, not {len(raw)}")
    value = int.from_bytes(raw, "big")
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))


def from_text(text: str) -> bytes:
    """The 16 bytes of an id's text form (either case).

    Raises:
        ValueError: ``text`` is not an id, named in the message.
    """
    if len(text) != TEXT_SIZE or text[0] not in "01234567":
        raise ValueError(
            f"{text!r:.40} is not a squall task id (26 characters of Crockford base32)"
        )
    value = 0
    try:
        for char in text:
            value = (value << 5) | _DECODE[char]
    except KeyError:
        raise ValueError(
            f"{text!r:.40} is not a squall task id (26 characters of Crockford base32)"
        ) from None
    return value.to_bytes(SIZE, "big")


def id_time(raw: bytes) -> float:
    """When the id was made, in Unix seconds."""
    return int.from_bytes(raw[:6], "big") / 1000


def new_text_id() -> str:
    return to_text(new_id())
