"""The router's store of background tasks, both kinds, on real SQLite files; and the router
core's background layer on a fake clock, with no sockets."""

from __future__ import annotations

import resource
import sqlite3

import pytest

from squall import ids, protocol
from squall.errors import ConfigError
from squall.protocol import EnqueueFlag, FailureCode, MsgType, Role, Status
from squall.router.state import RouterState
from squall.router.store import KeptTask, MemoryStore, SqliteStore, StoredFunction, open_store

pytestmark = pytest.mark.timeout(60)


def _task(n: int, frames: list[bytes] | None = None) -> KeptTask:
    return KeptTask(ids.new_id(), n, b"h" * 16, 0, 0, frames or [b"args%d" % n], "f", 100.0, 10.0)


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    made = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "d"))
    yield made
    made.close()


def test_a_task_goes_from_queued_to_finished_and_expires(store) -> None:
    task = _task(1)
    store.add([task])
    store.add([task])  # a resend: no second task
    store.put_body(b"h" * 16, b"body")
    store.commit()
    assert len(store) == 1 and store.get(task.id).state == "queued"
    store.started(task.id, 1, 101.0)
    assert store.get(task.id).state == "running"
    store.finished(task.id, "succeeded", Status.OK, [b"result"], 102.0)
    store.commit()
    record = store.get(task.id)
    assert (record.state, record.outcome, record.expires) == ("succeeded", [b"result"], 112.0)
    assert store.unfinished() == []
    assert store.expire(111.0) == 0 and store.get(task.id) is not None
    store.expire(112.0)
    store.commit()
    assert store.get(task.id) is None and store.expired(task.id)
    assert store.body(b"h" * 16) is None  # no task needs it any more
    assert not store.expired(ids.new_id())


def test_past_the_byte_bound_the_oldest_outcomes_go_first(tmp_path) -> None:
    for store in (MemoryStore(max_kept_bytes=5000), SqliteStore(str(tmp_path), "off", 5000)):
        tasks = [_task(n) for n in range(10)]
        store.add(tasks)
        for n, task in enumerate(tasks):
            store.finished(task.id, "succeeded", Status.OK, [b"x" * 1000], 200.0 + n)
        store.commit()
        evicted = store.expire(150.0)
        store.commit()
        assert evicted >= 5 and store.kept_bytes() <= 5000
        assert store.expired(tasks[0].id) and store.get(tasks[-1].id) is not None
        store.close()


def test_a_reopened_store_has_its_unfinished_tasks_even_without_close(tmp_path) -> None:
    store = SqliteStore(str(tmp_path))
    queued, running, done = _task(7), _task(8), _task(9)
    store.add([queued, running, done])
    store.started(running.id, 1, 1.0)
    store.finished(done.id, "failed", Status.ERROR, [b"summary", b""], 2.0, "KeyError", "k")
    store.commit()  # then "killed": no close()
    again = SqliteStore(str(tmp_path))
    states = {t.id: t.state for t in again.unfinished()}
    assert states == {queued.id: "queued", running.id: "running"}
    assert again.max_router_id() == 9
    failed = again.get(done.id)
    assert (failed.error_type, failed.error_message, failed.outcome) == (
        "KeyError",
        "k",
        [b"summary", b""],
    )
    again.close()
    store.close()


def test_a_foreign_or_damaged_file_is_refused_and_left_alone(tmp_path) -> None:
    garbage = tmp_path / "a"
    garbage.mkdir()
    (garbage / "squall.db").write_bytes(b"not a database" * 100)
    foreign = tmp_path / "b"
    foreign.mkdir()
    db = sqlite3.connect(foreign / "squall.db")
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()
    newer = tmp_path / "c"
    SqliteStore(str(newer)).close()
    db = sqlite3.connect(newer / "squall.db")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    for folder, words in (
        (garbage, "not a squall store"),
        (foreign, "another program"),
        (newer, "format 99"),
    ):
        before = (folder / "squall.db").read_bytes()
        with pytest.raises(ConfigError, match=words):
            open_store(str(folder))
        assert (folder / "squall.db").read_bytes() == before


def test_200000_kept_outcomes_stay_on_disk_not_in_memory(tmp_path) -> None:
    store = SqliteStore(str(tmp_path), "off")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for start in range(0, 200_000, 10_000):
        tasks = [_task(n) for n in range(start, start + 10_000)]
        store.add(tasks)
        for task in tasks:
            store.finished(task.id, "succeeded", Status.OK, [b"r" * 200], 1.0)
        store.commit()
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert len(store) == 200_000
    assert growth_mb < 60, growth_mb
    store.close()


# -- the core's background layer, on a fake clock ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _hello(state: RouterState, peer: bytes, role: Role, capacity: int = 0) -> None:
    state.handle(peer, protocol.encode_hello(role, 1, capacity))


def _enqueue_item(task_id: int, key: bytes, flags: int = 0) -> protocol.SubmitItem:
    frames = [] if flags else [b"args"]
    return protocol.SubmitItem(task_id, b"h" * 16, 0, 0, (), frames, key, 0.0, "f", flags)


def _sent(state: RouterState, kind: type) -> list:
    return [s for s in state.take_sends() if isinstance(s, kind)]


def test_a_background_task_outlives_its_client_and_reaches_a_later_one() -> None:
    from squall.router.instructions import SendEnqueued, SendResults, SendTasks

    clock = Clock()
    state = RouterState(clock=clock, wall=clock)
    client, later, worker = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    _hello(state, client, Role.CLIENT)
    state.handle(client, protocol.encode_fn_body(protocol.function_hash(b"body"), b"body"))
    key = ids.new_id()
    item = _enqueue_item(1, key)._replace(fn_hash=protocol.function_hash(b"body"))
    state.handle(client, protocol.encode_enqueue([item]))
    assert [s.task_ids for s in _sent(state, SendEnqueued)] == [[1]]
    state.handle(client, protocol.encode_disconnect())  # its submitter leaves
    _hello(state, worker, Role.WORKER, capacity=5)
    (tasks,) = _sent(state, SendTasks)
    assert [t.key for t in tasks.tasks] == [key]
    _hello(state, later, Role.CLIENT)
    state.handle(later, protocol.encode_enqueue([_enqueue_item(9, key, EnqueueFlag.ATTACH)]))
    state.take_sends()
    state.handle(worker, protocol.encode_result([(tasks.tasks[0].id, Status.OK, [b"42"])]))
    results = _sent(state, SendResults)
    assert [(r.client, r.outcomes) for r in results] == [(later, [(9, Status.OK, [b"42"])])]
    assert state.task_info(key)["state"] == "succeeded"
    assert state.stats()["clients"] == 1  # the router's own entry is not counted


def test_an_unknown_id_fails_its_attachment_with_task_not_found() -> None:
    from squall.router.instructions import SendResults

    state = RouterState()
    client = b"\x01" * 16
    _hello(state, client, Role.CLIENT)
    state.handle(
        client, protocol.encode_enqueue([_enqueue_item(3, ids.new_id(), EnqueueFlag.ATTACH)])
    )
    ((_, status, frames),) = _sent(state, SendResults)[0].outcomes
    assert status == Status.ERROR
    assert protocol.read_error_summary(frames[0]).code == FailureCode.TASK_NOT_FOUND


def test_a_task_running_at_a_restart_waits_for_its_worker_then_runs_again(tmp_path) -> None:
    from squall.router.instructions import SendTasks

    clock = Clock()
    store = SqliteStore(str(tmp_path))
    record = _task(77)
    store.add([record])
    store.started(record.id, 1, 5.0)
    store.commit()
    state = RouterState(clock=clock, store=store)
    assert 77 in state.limbo and state.task_info(record.id)["state"] == "running"
    worker = b"\x03" * 16
    _hello(state, worker, Role.WORKER, capacity=5)
    assert _sent(state, SendTasks) == []  # not run again at once
    clock.now += 11  # past the grace: nobody reported it
    state.handle(worker, protocol.encode_heartbeat())  # (the worker itself is alive)
    state.tick()
    (sent,) = _sent(state, SendTasks)
    assert [t.id for t in sent.tasks] == [77] and sent.tasks[0].attempt == 1
    state2 = RouterState(clock=clock, store=SqliteStore(str(tmp_path)))
    _hello(state2, worker, Role.WORKER, capacity=5)
    state2.handle(worker, protocol.encode_result([(77, Status.OK, [b"done"])]))  # reported
    assert state2.task_info(record.id)["state"] == "succeeded"
    assert not state2.limbo
    assert MsgType.ENQUEUE  # (the message type exists)


def test_a_recovered_task_keeps_its_worker_group(tmp_path) -> None:
    store = SqliteStore(str(tmp_path))
    record = _task(5)
    record.group = "gpu"
    store.add([record])
    store.commit()
    store.close()
    state = RouterState(store=SqliteStore(str(tmp_path)))
    assert state.kept[record.id].group == "gpu"
    assert (
        state.lanes[("gpu", "default", "")] and not state.queue
    )  # only that group's workers get it


def test_a_worker_gets_a_recovered_tasks_body_from_the_store(tmp_path) -> None:
    from squall.router.instructions import SendBody

    body = b"a cloudpickled function"
    fn_hash = protocol.function_hash(body)
    store = SqliteStore(str(tmp_path))
    record = _task(6)
    record.fn_hash = fn_hash
    store.add([record])
    store.put_body(fn_hash, body)
    store.commit()
    store.close()
    state = RouterState(store=SqliteStore(str(tmp_path)))  # restarted: its body cache is empty
    worker = b"\x03" * 16
    _hello(state, worker, Role.WORKER, capacity=5)
    state.take_sends()
    state.handle(worker, protocol.encode_fn_fetch(fn_hash))
    assert [(s.peer, s.body) for s in _sent(state, SendBody)] == [(worker, body)]


def test_a_format_2_store_is_upgraded_in_place_and_keeps_its_tasks(tmp_path) -> None:
    """A router upgraded to calls by name opens the store an older one wrote: the new column
    and table are added, the tasks stay."""
    store = SqliteStore(str(tmp_path))
    kept = _task(1)
    store.add([kept])
    store.commit()
    store.close()
    db = sqlite3.connect(tmp_path / "squall.db")  # make it what format 2 wrote
    db.execute("ALTER TABLE tasks DROP COLUMN called")
    db.execute("DROP TABLE functions")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    reopened = SqliteStore(str(tmp_path))
    (task,) = reopened.unfinished()
    assert task.id == kept.id and task.route is None
    reopened.put_function(StoredFunction("a.b", 1, b"h" * 16, b"body", 1.0))
    reopened.commit()
    assert [f.name for f in reopened.functions()] == ["a.b"]
    reopened.close()
    version = sqlite3.connect(tmp_path / "squall.db").execute("PRAGMA user_version").fetchone()
    assert version[0] == 3
