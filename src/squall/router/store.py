"""Where the router keeps background tasks: in memory, or in SQLite with ``--data``.

The router never unpickles, and neither does this: a kept task is opaque payload frames, a
function body by hash, a state and, once finished, opaque outcome frames with the error's type
and message as text. Both stores take writes as they happen and make them durable together at
:meth:`Store.commit`, which the router calls once per loop turn before it sends anything, so
one disk sync covers every enqueue of the turn and no confirmation precedes its commit.

``SqliteStore`` (``squall router --data DIR``) keeps ``DIR/squall.db`` in WAL mode. What a
commit survives depends on ``--fsync``:

- ``full`` (default): synced to disk before the router confirms; survives power loss.
- ``normal``: survives the router crashing or being killed; an OS crash or power loss may lose
  the last commits (WAL with ``synchronous=NORMAL``).
- ``off``: survives the router crashing; an OS crash or power loss may lose recent commits or
  damage the file.

Finished outcomes live on disk only, so the router's memory does not grow with the number
kept. Past ``max_kept_bytes`` the oldest finished outcomes are dropped first; dropped and
expired ids are remembered (bounded) so that asking for one says "expired", not "unknown".
"""

from __future__ import annotations

import collections
import os
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from squall.errors import ConfigError
from squall.protocol import DEFAULT_ROUTE, Route

#: the store's file format; another number in an existing file is refused, never rewritten
#: 3: kept tasks record the function a call by name calls; published functions
STORE_FORMAT = 3
#: the formats this code upgrades in place when it opens them (an added column and table)
_UPGRADES = {2: ["ALTER TABLE tasks ADD COLUMN called TEXT NOT NULL DEFAULT ''"]}
#: SQLite's application_id for squall's files ("SQal")
APPLICATION_ID = 0x53516171
#: expired or evicted ids remembered, to tell "expired" from "unknown"
MAX_TOMBSTONES = 1_000_000
DEFAULT_MAX_KEPT_BYTES = 1 << 30
_LEN = struct.Struct("!I")
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


@dataclass(slots=True)
class KeptTask:
    """One background task as the store keeps it."""

    id: bytes
    router_id: int
    fn_hash: bytes
    kind: int
    window: int
    frames: list[bytes]
    function: str
    submitted: float
    keep: float
    state: str = "queued"
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    expires: float | None = None
    status: int = -1
    outcome: list[bytes] = field(default_factory=list)
    error_type: str = ""
    error_message: str = ""
    #: the worker group its client was restricted to ("" for any worker): kept, so that a
    #: recovered task still runs only there
    group: str = ""
    #: its queue, priority, not-before and expiry times (None: the default route)
    route: Route | None = None


@dataclass
class StoredSchedule:
    """A periodic schedule as the store keeps it: its spec (JSON), the task each firing makes
    (function hash and payload frames; the body is in ``bodies``), and where it stands."""

    name: str
    spec: str
    fn_hash: bytes
    frames: list[bytes]
    function: str
    group: str
    next_fire: float
    last_fire: float | None = None
    last_id: bytes = b""
    paused: bool = False


@dataclass(frozen=True)
class StoredFunction:
    """A function published by value (``ex.publish``): its current version's body."""

    name: str
    version: int
    fn_hash: bytes
    body: bytes
    published_at: float


@dataclass(frozen=True)
class StoredCallback:
    """A webhook the HTTP gateway owes for a kept task (see ``squall.router.callbacks``)."""

    id: bytes
    url: str
    created: float


class Store(Protocol):
    """What the router's core needs of a store (see the module's docstring)."""

    @property
    def dirty(self) -> bool: ...

    def add(self, tasks: Sequence[KeptTask]) -> None: ...

    def put_body(self, fn_hash: bytes, body: bytes) -> None: ...

    def put_schedule(self, schedule: StoredSchedule) -> None: ...

    def delete_schedule(self, name: str) -> None: ...

    def schedules(self) -> list[StoredSchedule]: ...

    def put_function(self, function: StoredFunction) -> None: ...

    def delete_function(self, name: str) -> None: ...

    def functions(self) -> list[StoredFunction]: ...

    def put_callback(self, callback: StoredCallback) -> None: ...

    def delete_callback(self, task_id: bytes) -> None: ...

    def callbacks(self) -> list[StoredCallback]: ...

    def body(self, fn_hash: bytes) -> bytes | None: ...

    def started(self, task_id: bytes, attempts: int, at: float) -> None: ...

    def requeued(self, task_id: bytes) -> None: ...

    def finished(
        self,
        task_id: bytes,
        state: str,
        status: int,
        outcome: Sequence[bytes],
        at: float,
        error_type: str = "",
        error_message: str = "",
    ) -> None: ...

    def get(self, task_id: bytes) -> KeptTask | None: ...

    def get_many(self, task_ids: Sequence[bytes]) -> dict[bytes, KeptTask]: ...

    def expired(self, task_id: bytes) -> bool: ...

    def unfinished(self) -> list[KeptTask]: ...

    def max_router_id(self) -> int: ...

    def expire(self, now: float) -> int: ...

    def kept_bytes(self) -> int: ...

    def __len__(self) -> int: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


def _size(frames: Iterable[bytes]) -> int:
    return sum(len(f) for f in frames)


def pack_frames(frames: Sequence[bytes]) -> bytes:
    """Frames in one blob, each behind its length."""
    return b"".join(_LEN.pack(len(f)) + bytes(f) for f in frames)


def unpack_frames(blob: bytes) -> list[bytes]:
    frames, at = [], 0
    while at < len(blob):
        (size,) = _LEN.unpack_from(blob, at)
        frames.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return frames


class _Tombstones:
    def __init__(self) -> None:
        self._ids: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def add(self, task_id: bytes) -> None:
        self._ids[task_id] = None
        if len(self._ids) > MAX_TOMBSTONES:
            self._ids.popitem(last=False)

    def __contains__(self, task_id: bytes) -> bool:
        return task_id in self._ids


class MemoryStore:
    """Kept tasks in the router's memory (no ``--data``): a restart loses them all."""

    def __init__(self, max_kept_bytes: int = DEFAULT_MAX_KEPT_BYTES) -> None:
        self.max_kept_bytes = max_kept_bytes
        self._tasks: dict[bytes, KeptTask] = {}
        #: finished ids in the order they finished: the eviction order
        self._finished: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        #: finished task ids by expiry time, for the sweep (a heap would do too: few per call)
        self._expiry: list[tuple[float, bytes]] = []
        self._bodies: dict[bytes, bytes] = {}
        self._schedules: dict[str, StoredSchedule] = {}
        self._functions: dict[str, StoredFunction] = {}
        self._callbacks: dict[bytes, StoredCallback] = {}
        self._bytes = 0
        self._tombstones = _Tombstones()

    dirty = False

    def add(self, tasks: Sequence[KeptTask]) -> None:
        for task in tasks:
            if task.id not in self._tasks:
                self._tasks[task.id] = task
                self._bytes += _size(task.frames)

    def put_body(self, fn_hash: bytes, body: bytes) -> None:
        if fn_hash not in self._bodies:
            self._bodies[fn_hash] = body
            self._bytes += len(body)

    def put_schedule(self, schedule: StoredSchedule) -> None:
        self._schedules[schedule.name] = schedule

    def delete_schedule(self, name: str) -> None:
        self._schedules.pop(name, None)

    def schedules(self) -> list[StoredSchedule]:
        return list(self._schedules.values())

    def put_function(self, function: StoredFunction) -> None:
        self._functions[function.name] = function

    def delete_function(self, name: str) -> None:
        self._functions.pop(name, None)

    def functions(self) -> list[StoredFunction]:
        return list(self._functions.values())

    def put_callback(self, callback: StoredCallback) -> None:
        self._callbacks[callback.id] = callback

    def delete_callback(self, task_id: bytes) -> None:
        self._callbacks.pop(task_id, None)

    def callbacks(self) -> list[StoredCallback]:
        return list(self._callbacks.values())

    def body(self, fn_hash: bytes) -> bytes | None:
        return self._bodies.get(fn_hash)

    def started(self, task_id: bytes, attempts: int, at: float) -> None:
        task = self._tasks.get(task_id)
        if task is not None:
            task.state, task.attempts, task.started = "running", attempts, at

    def requeued(self, task_id: bytes) -> None:
        task = self._tasks.get(task_id)
        if task is not None:
            task.state = "queued"

    def finished(
        self,
        task_id: bytes,
        state: str,
        status: int,
        outcome: Sequence[bytes],
        at: float,
        error_type: str = "",
        error_message: str = "",
    ) -> None:
        task = self._tasks.get(task_id)
        if task is None or task.finished is not None:
            return
        if state == "failed":  # its arguments stay: an operator may run it again (retry)
            self._bytes += _size(outcome)
        else:
            self._bytes += _size(outcome) - _size(task.frames)
            task.frames = []
        task.state, task.status, task.outcome = state, status, list(outcome)
        task.finished, task.expires = at, at + task.keep
        task.error_type, task.error_message = error_type, error_message
        self._finished[task_id] = None
        import heapq

        heapq.heappush(self._expiry, (task.expires, task_id))

    def get(self, task_id: bytes) -> KeptTask | None:
        return self._tasks.get(task_id)

    def get_many(self, task_ids: Sequence[bytes]) -> dict[bytes, KeptTask]:
        tasks = self._tasks
        return {t: tasks[t] for t in task_ids if t in tasks}

    def expired(self, task_id: bytes) -> bool:
        return task_id in self._tombstones

    def unfinished(self) -> list[KeptTask]:
        return [t for t in self._tasks.values() if t.finished is None]

    def max_router_id(self) -> int:
        return max((t.router_id for t in self._tasks.values()), default=0)

    def expire(self, now: float) -> int:
        import heapq

        while self._expiry and self._expiry[0][0] <= now:
            _, task_id = heapq.heappop(self._expiry)
            self._drop(task_id)
        evicted = 0
        while self._bytes > self.max_kept_bytes and self._finished:
            self._drop(next(iter(self._finished)))
            evicted += 1
        return evicted

    def _drop(self, task_id: bytes) -> None:
        task = self._tasks.pop(task_id, None)
        self._finished.pop(task_id, None)
        if task is not None:
            self._bytes -= _size(task.outcome) + _size(task.frames)
            self._tombstones.add(task_id)
            if not any(t.fn_hash == task.fn_hash for t in self._tasks.values()):
                body = self._bodies.pop(task.fn_hash, None)
                self._bytes -= len(body or b"")

    def kept_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._tasks)

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


_FUNCTIONS = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    fn_hash BLOB NOT NULL,
    body BLOB NOT NULL,
    published_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS callbacks (
    id BLOB PRIMARY KEY,
    url TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
"""

_SCHEMA = (
    """
CREATE TABLE tasks (
    id BLOB PRIMARY KEY,
    router_id INTEGER NOT NULL,
    fn_hash BLOB NOT NULL,
    kind INTEGER NOT NULL,
    window INTEGER NOT NULL,
    frames BLOB NOT NULL,
    function TEXT NOT NULL,
    submitted REAL NOT NULL,
    keep REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    expires REAL,
    status INTEGER NOT NULL DEFAULT -1,
    outcome BLOB NOT NULL DEFAULT x'',
    error_type TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    worker_group TEXT NOT NULL DEFAULT '',
    queue TEXT NOT NULL DEFAULT 'default',
    priority INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    deadline REAL NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    called TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX tasks_expires ON tasks (expires) WHERE expires IS NOT NULL;
CREATE INDEX tasks_finished ON tasks (finished) WHERE finished IS NOT NULL;
CREATE INDEX tasks_unfinished ON tasks (state) WHERE finished IS NULL;
CREATE TABLE bodies (hash BLOB PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    fn_hash BLOB NOT NULL,
    frames BLOB NOT NULL,
    function TEXT NOT NULL,
    worker_group TEXT NOT NULL,
    next_fire REAL NOT NULL,
    last_fire REAL,
    last_id BLOB NOT NULL,
    paused INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE tombstones (id BLOB PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX tombstones_at ON tombstones (at);
"""
    + _FUNCTIONS
)

_COLUMNS = (
    "id, router_id, fn_hash, kind, window, frames, function, submitted, keep, state, "
    "attempts, started, finished, expires, status, outcome, error_type, error_message, "
    "worker_group, queue, priority, not_before, deadline, called"
)


class SqliteStore:
    """Kept tasks in ``directory/squall.db`` (SQLite, WAL): they survive a router restart.

    Writes go into one open transaction, committed by :meth:`commit` (once per router loop
    turn). State changes of running tasks (started, requeued) are batched there too.

    Raises:
        ConfigError: the file is not a squall store, or another format version; it is left
            as it was.
    """

    def __init__(
        self, directory: str, fsync: str = "full", max_kept_bytes: int = DEFAULT_MAX_KEPT_BYTES
    ) -> None:
        if fsync not in _SYNCHRONOUS:
            raise ConfigError(f"--fsync must be full, normal or off, not {fsync!r}")
        self.max_kept_bytes = max_kept_bytes
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, "squall.db")
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if existed:
            self._check(self.path)
        else:
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[fsync]}")
        db.execute("PRAGMA cache_size=-8192")  # 8 MiB: outcomes stay on disk, not in memory
        if not existed:
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={STORE_FORMAT}")
        else:
            self._upgrade(db)
        self._bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM tasks").fetchone()[0])
        self._bytes += int(
            db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM bodies").fetchone()[0]
        )
        self._count = int(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
        self._in_tx = False
        self._started: dict[bytes, tuple[int, float]] = {}
        self._requeued: set[bytes] = set()
        #: outcomes to write at the next commit (one executemany, not two queries each)
        self._finished: list[tuple[object, ...]] = []
        #: argument bytes of each unfinished task, for the byte count when it finishes
        self._sizes: dict[bytes, int] = dict(
            db.execute("SELECT id, size FROM tasks WHERE finished IS NULL").fetchall()
        )
        self._next_sweep_due: float | None = None

    @staticmethod
    def _upgrade(db: sqlite3.Connection) -> None:
        """Bring a store of an older format (checked by :meth:`_check`) up to this one, in one
        transaction: a router upgraded in place keeps its tasks."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == STORE_FORMAT:
            return
        db.execute("BEGIN IMMEDIATE")
        for statement in _UPGRADES[version]:
            db.execute(statement)
        for statement in _FUNCTIONS.split(";"):  # (executescript would commit first)
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={STORE_FORMAT}")
        db.execute("COMMIT")

    @staticmethod
    def _check(path: str) -> None:
        """Refuse a file that is not a squall store of this format, without writing to it."""
        try:
            probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                app = probe.execute("PRAGMA application_id").fetchone()[0]
                version = probe.execute("PRAGMA user_version").fetchone()[0]
            finally:
                probe.close()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"{path} is not a squall store ({exc}); nothing was changed"
            ) from None
        if app != APPLICATION_ID:
            raise ConfigError(
                f"{path} is another program's SQLite database, not a squall store; "
                "nothing was changed"
            )
        if version != STORE_FORMAT and version not in _UPGRADES:
            raise ConfigError(
                f"{path} was written by store format {version}; this squall reads format "
                f"{STORE_FORMAT}; nothing was changed"
            )

    @property
    def dirty(self) -> bool:
        return self._in_tx or bool(self._started or self._requeued or self._finished)

    def _begin(self) -> sqlite3.Connection:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True
        return self._db

    def add(self, tasks: Sequence[KeptTask]) -> None:
        rows = [
            (
                t.id,
                t.router_id,
                t.fn_hash,
                t.kind,
                t.window,
                pack_frames(t.frames),
                t.function,
                t.submitted,
                t.keep,
                t.state,
                t.attempts,
                t.group,
                *(t.route or DEFAULT_ROUTE),  # queue, priority, not before, expiry, called
                _size(t.frames),  # last: read as row[-1]
            )
            for t in tasks
        ]
        db = self._begin()
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO tasks (id, router_id, fn_hash, kind, window, frames, "
            "function, submitted, keep, state, attempts, worker_group, queue, priority, "
            "not_before, deadline, called, size) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        added = db.total_changes - before
        self._count += added
        for row in rows:
            self._sizes.setdefault(row[0], row[-1])
        if added == len(rows):
            self._bytes += sum(r[-1] for r in rows)
        else:  # some were known: count only the new ones' bytes (rare: a resend)
            self._bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM tasks").fetchone()[0])

    def put_body(self, fn_hash: bytes, body: bytes) -> None:
        db = self._begin()
        before = db.total_changes
        db.execute("INSERT OR IGNORE INTO bodies (hash, body) VALUES (?, ?)", (fn_hash, body))
        if db.total_changes > before:
            self._bytes += len(body)

    def body(self, fn_hash: bytes) -> bytes | None:
        row = self._db.execute("SELECT body FROM bodies WHERE hash = ?", (fn_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_schedule(self, schedule: StoredSchedule) -> None:
        s = schedule
        self._begin().execute(
            "INSERT OR REPLACE INTO schedules (name, spec, fn_hash, frames, function, "
            "worker_group, next_fire, last_fire, last_id, paused) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                s.name,
                s.spec,
                s.fn_hash,
                pack_frames(s.frames),
                s.function,
                s.group,
                s.next_fire,
                s.last_fire,
                s.last_id,
                int(s.paused),
            ),
        )

    def delete_schedule(self, name: str) -> None:
        self._begin().execute("DELETE FROM schedules WHERE name = ?", (name,))

    def put_function(self, function: StoredFunction) -> None:
        f = function
        self._begin().execute(
            "INSERT OR REPLACE INTO functions (name, version, fn_hash, body, published_at) "
            "VALUES (?,?,?,?,?)",
            (f.name, f.version, f.fn_hash, f.body, f.published_at),
        )

    def delete_function(self, name: str) -> None:
        self._begin().execute("DELETE FROM functions WHERE name = ?", (name,))

    def functions(self) -> list[StoredFunction]:
        rows = self._db.execute(
            "SELECT name, version, fn_hash, body, published_at FROM functions ORDER BY name"
        ).fetchall()
        return [
            StoredFunction(str(n), int(v), bytes(h), bytes(b), float(at)) for n, v, h, b, at in rows
        ]

    def put_callback(self, callback: StoredCallback) -> None:
        c = callback
        self._begin().execute(
            "INSERT OR REPLACE INTO callbacks (id, url, created) VALUES (?,?,?)",
            (c.id, c.url, c.created),
        )

    def delete_callback(self, task_id: bytes) -> None:
        self._begin().execute("DELETE FROM callbacks WHERE id = ?", (task_id,))

    def callbacks(self) -> list[StoredCallback]:
        rows = self._db.execute("SELECT id, url, created FROM callbacks ORDER BY created")
        return [StoredCallback(bytes(i), str(u), float(c)) for i, u, c in rows.fetchall()]

    def schedules(self) -> list[StoredSchedule]:
        rows = self._db.execute(
            "SELECT name, spec, fn_hash, frames, function, worker_group, next_fire, last_fire, "
            "last_id, paused FROM schedules ORDER BY name"
        ).fetchall()
        return [_stored_schedule(row) for row in rows]

    def started(self, task_id: bytes, attempts: int, at: float) -> None:
        self._requeued.discard(task_id)
        self._started[task_id] = (attempts, at)

    def requeued(self, task_id: bytes) -> None:
        self._started.pop(task_id, None)
        self._requeued.add(task_id)

    def _flush_states(self) -> None:
        """Write the buffered state changes, starts before ends."""
        if self._started:
            started, self._started = self._started, {}
            self._begin().executemany(
                "UPDATE tasks SET state = 'running', attempts = ?, started = ? "
                "WHERE id = ? AND finished IS NULL",
                [(a, at, task_id) for task_id, (a, at) in started.items()],
            )
        if self._requeued:
            requeued, self._requeued = self._requeued, set()
            self._begin().executemany(
                "UPDATE tasks SET state = 'queued' WHERE id = ? AND finished IS NULL",
                [(task_id,) for task_id in requeued],
            )
        if self._finished:
            finished, self._finished = self._finished, []
            self._begin().executemany(
                "UPDATE tasks SET state = ?, status = ?, outcome = ?, finished = ?, "
                "expires = ? + keep, error_type = ?, error_message = ?, "
                "frames = CASE WHEN ? THEN frames ELSE x'' END, size = ? "
                "WHERE id = ? AND finished IS NULL",
                finished,
            )

    def finished(
        self,
        task_id: bytes,
        state: str,
        status: int,
        outcome: Sequence[bytes],
        at: float,
        error_type: str = "",
        error_message: str = "",
    ) -> None:
        size = self._sizes.pop(task_id, None)
        if size is None:
            return  # not kept, or finished already
        blob = pack_frames(outcome)
        failed = state == "failed"  # its arguments stay: an operator may run it again (retry)
        new_size = len(blob) + (size if failed else 0)
        self._finished.append(
            (state, status, blob, at, at, error_type, error_message, failed, new_size, task_id)
        )
        self._bytes += new_size - size

    def get(self, task_id: bytes) -> KeptTask | None:
        self._flush_states()
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _record(row)

    def get_many(self, task_ids: Sequence[bytes]) -> dict[bytes, KeptTask]:
        """The records of those of ``task_ids`` kept: one query per 500 ids, not one each
        (the router asks for every id it is sent, to attach a resent task, not run it twice)."""
        self._flush_states()
        found: dict[bytes, KeptTask] = {}
        for start in range(0, len(task_ids), 500):
            chunk = list(task_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE id IN ({marks})", chunk
            ).fetchall()
            for row in rows:
                record = _record(row)
                found[record.id] = record
        return found

    def expired(self, task_id: bytes) -> bool:
        row = self._db.execute("SELECT 1 FROM tombstones WHERE id = ?", (task_id,)).fetchone()
        return row is not None

    def unfinished(self) -> list[KeptTask]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE finished IS NULL ORDER BY id"
        ).fetchall()
        return [_record(row) for row in rows]

    def max_router_id(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(router_id), 0) FROM tasks").fetchone()
        return int(row[0])

    def expire(self, now: float) -> int:
        """Drop outcomes past their expiry, then the oldest finished past the byte bound."""
        db = self._db
        due = db.execute(
            "SELECT id FROM tasks WHERE expires IS NOT NULL AND expires <= ? LIMIT 10000", (now,)
        ).fetchall()
        if due:
            self._drop([row[0] for row in due], now)
        evicted = 0
        while self._bytes > self.max_kept_bytes:
            oldest = db.execute(
                "SELECT id, size FROM tasks WHERE finished IS NOT NULL ORDER BY finished LIMIT 1000"
            ).fetchall()
            if not oldest:
                break
            excess, chosen = self._bytes - self.max_kept_bytes, []
            for task_id, size in oldest:
                chosen.append(task_id)
                excess -= size
                if excess <= 0:
                    break
            self._drop(chosen, now)
            evicted += len(chosen)
        return evicted

    def _drop(self, task_ids: list[bytes], now: float) -> None:
        db = self._begin()
        marks = ",".join("?" * len(task_ids))
        size = db.execute(
            f"SELECT COALESCE(SUM(size), 0) FROM tasks WHERE id IN ({marks})", task_ids
        ).fetchone()[0]
        db.execute(f"DELETE FROM tasks WHERE id IN ({marks})", task_ids)
        db.executemany(
            "INSERT OR REPLACE INTO tombstones (id, at) VALUES (?, ?)",
            [(task_id, now) for task_id in task_ids],
        )
        self._count -= len(task_ids)
        self._bytes -= int(size)
        bodies = db.execute(
            "SELECT hash, LENGTH(body) FROM bodies WHERE hash NOT IN (SELECT fn_hash FROM tasks)"
        ).fetchall()
        if bodies:
            db.executemany("DELETE FROM bodies WHERE hash = ?", [(h,) for h, _ in bodies])
            self._bytes -= sum(n for _, n in bodies)
        excess = db.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0] - MAX_TOMBSTONES
        if excess > 0:
            db.execute(
                "DELETE FROM tombstones WHERE id IN "
                "(SELECT id FROM tombstones ORDER BY at LIMIT ?)",
                (excess,),
            )

    def kept_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return self._count

    def commit(self) -> None:
        self._flush_states()
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()


def _record(row: Any) -> KeptTask:
    (
        task_id,
        router_id,
        fn_hash,
        kind,
        window,
        frames,
        function,
        submitted,
        keep,
        state,
        attempts,
        started,
        finished,
        expires,
        status,
        outcome,
        error_type,
        error_message,
        group,
        *route,
    ) = row
    return KeptTask(
        bytes(task_id),
        int(router_id),
        bytes(fn_hash),
        int(kind),
        int(window),
        unpack_frames(bytes(frames)),
        str(function),
        float(submitted),
        float(keep),
        str(state),
        int(attempts),
        started,
        finished,
        expires,
        int(status),
        unpack_frames(bytes(outcome)),
        str(error_type),
        str(error_message),
        str(group),
        _route(
            Route(str(route[0]), int(route[1]), float(route[2]), float(route[3]), str(route[4]))
        ),
    )


def _stored_schedule(row: tuple[Any, ...]) -> StoredSchedule:
    name, spec, fn_hash, frames, function, group, next_fire, last_fire, last_id, paused = row
    return StoredSchedule(
        str(name),
        str(spec),
        bytes(fn_hash),
        unpack_frames(bytes(frames)),
        str(function),
        str(group),
        float(next_fire),
        None if last_fire is None else float(last_fire),
        bytes(last_id),
        bool(paused),
    )


def _route(route: Route) -> Route | None:
    return None if route == DEFAULT_ROUTE else route


def open_store(
    data_dir: str | None, fsync: str = "full", max_kept_bytes: int = DEFAULT_MAX_KEPT_BYTES
) -> Store:
    """The store for ``--data DIR`` (SQLite), or the in-memory one without it."""
    if data_dir is None:
        return MemoryStore(max_kept_bytes)
    return SqliteStore(data_dir, fsync, max_kept_bytes)
