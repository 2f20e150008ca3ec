"""Pure tests of the router's periodic schedules: fake times only, no sockets, no sleeping."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import pytest

from squall import ids
from squall.router.timetable import (
    Schedule,
    ScheduleError,
    ScheduleSpec,
    Timetable,
    firing_id,
)

T0 = 1_780_000_000.0  # 2026-05-28, a round ten seconds
DAY = 86_400.0


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def never(task_id: bytes) -> bool:
    return False


def fire_times(spec: ScheduleSpec, start: float, n: int) -> list[float]:
    out = []
    t = start
    for _ in range(n):
        t = spec.next_after(t)
        out.append(t)
    return out


def every(seconds: float, name: str = "tick", **options: Any) -> ScheduleSpec:
    return ScheduleSpec(name, every=seconds, **options)


# -- cron and time zones ----------------------------------------------------------------------


def test_cron_berlin_spring_forward_fires_at_three() -> None:
    spec = ScheduleSpec("nightly", cron="30 2 * * *", tz="Europe/Berlin")
    assert fire_times(spec, utc(2026, 3, 27), 4) == [
        utc(2026, 3, 27, 1, 30),  # 02:30 CET
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_cron_berlin_fall_back_fires_once() -> None:
    spec = ScheduleSpec("nightly", cron="30 2 * * *", tz="Europe/Berlin")
    assert fire_times(spec, utc(2026, 10, 23), 4) == [
        utc(2026, 10, 23, 0, 30),
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST); the second one does not fire
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    # strictly after, even from inside the repeated hour (02:10 CET, the second pass)
    assert spec.next_after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)
    assert spec.next_after(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)


@pytest.mark.parametrize("start", [utc(2026, 3, 8, 3), utc(2026, 10, 31, 23)])
def test_cron_hourly_new_york_across_dst_has_no_gap_or_duplicate(start: float) -> None:
    spec = ScheduleSpec("hourly", cron="0 * * * *", tz="America/New_York")
    times = fire_times(spec, start, 12)
    assert times[0] == start + 3600
    assert [b - a for a, b in zip(times[:-1], times[1:], strict=True)] == [3600.0] * 11


def test_cron_due_through_the_night_of_fall_back() -> None:
    table = Timetable()
    table.add(
        ScheduleSpec("nightly", cron="30 2 * * *", tz="Europe/Berlin"), None, utc(2026, 10, 24, 12)
    )
    fired = []
    now = utc(2026, 10, 24, 12)
    while now < utc(2026, 10, 25, 12):
        now += 600  # woken every ten minutes, through both passes of 02:00-03:00
        fired += [f.fire_time for f in table.due(now, never)]
    assert fired == [utc(2026, 10, 25, 0, 30)]


def test_cron_hourly_new_york_due_by_next_due() -> None:
    table = Timetable()
    table.add(ScheduleSpec("h", cron="0 * * * *", tz="America/New_York"), None, utc(2026, 11, 1))
    fired = []
    for _ in range(12):
        when = table.next_due()
        assert when is not None
        fired += [f.fire_time for f in table.due(when, never)]
    assert fired == [utc(2026, 11, 1) + 3600 * k for k in range(1, 13)]


def test_cron_next_after_is_strictly_after() -> None:
    spec = ScheduleSpec("five", cron="*/5 * * * *")
    on_tick = utc(2026, 5, 1, 12, 5)
    assert spec.next_after(on_tick) == on_tick + 300
    assert spec.next_after(on_tick - 0.001) == on_tick
    assert spec.next_after(on_tick + 0.5) == on_tick + 300


def test_cron_due_across_spring_forward_in_a_timetable() -> None:
    table = Timetable()
    spec = ScheduleSpec("nightly", cron="30 2 * * *", tz="Europe/Berlin")
    table.add(spec, None, now=utc(2026, 3, 28, 12))
    assert table.next_due() == utc(2026, 3, 29, 1, 0)
    [firing] = table.due(utc(2026, 3, 29, 1, 0, 1), never)
    assert firing.fire_time == utc(2026, 3, 29, 1, 0)
    assert table.next_due() == utc(2026, 3, 30, 0, 30)


def test_cron_catchup_all_matches_forward_ticks() -> None:
    table = Timetable(grace=30)
    spec = ScheduleSpec("five", cron="*/5 * * * *", catchup="all", max_catchup=5)
    start = utc(2026, 5, 1, 12, 1)
    table.add(spec, None, now=start)
    firings = table.due(start + 3600, never)  # 12 ticks, all missed: the newest 5
    assert [f.fire_time for f in firings] == [utc(2026, 5, 1, 12, 40) + 300 * i for i in range(5)]
    assert table.next_due() == utc(2026, 5, 1, 13, 5)


def test_cron_latest_after_a_month_down_is_quick() -> None:
    table = Timetable(grace=30)
    start = utc(2026, 5, 1)
    table.add(ScheduleSpec("minute", cron="* * * * *"), None, now=start)
    began = time.perf_counter()
    firings = table.due(start + 30 * DAY + 45, never)  # 43,200 ticks, all missed
    assert time.perf_counter() - began < 0.5
    assert [f.fire_time for f in firings] == [start + 30 * DAY]
    assert table.next_due() == start + 30 * DAY + 60


# -- every -------------------------------------------------------------------------------------


def test_every_is_on_the_grid_and_each_tick_fires_once() -> None:
    table = Timetable()
    table.add(every(10), "payload", now=T0)
    fired: list[float] = []
    now = T0
    while now < T0 + 100:
        now += 2.5  # due() called more often than the period, as a router woken by anything
        fired += [f.fire_time for f in table.due(now, never)]
    assert fired == [T0 + 10 * k for k in range(1, 11)]
    assert table.next_due() == T0 + 110


def test_every_stays_on_its_grid_when_late() -> None:
    table = Timetable()
    table.add(every(10), None, now=T0 + 0.25)
    [firing] = table.due(T0 + 13.9, never)  # a late wake-up does not shift the grid
    assert firing.fire_time == T0 + 10.25
    assert table.next_due() == T0 + 20.25


def test_next_due_sleeps_exactly_until_the_earliest() -> None:
    table = Timetable()
    assert table.next_due() is None
    table.add(every(30, "slow"), None, now=T0)
    table.add(every(10, "fast"), None, now=T0)
    assert table.next_due() == T0 + 10
    assert table.due(T0 + 9.999, never) == []
    assert [f.name for f in table.due(T0 + 10, never)] == ["fast"]


def test_due_returns_fire_time_order_across_schedules() -> None:
    table = Timetable()
    table.add(every(3, "b"), None, now=T0)
    table.add(every(2, "a"), None, now=T0)
    firings = table.due(T0 + 6, never)
    assert [(f.name, f.fire_time - T0) for f in firings] == [
        ("a", 2),
        ("b", 3),
        ("a", 4),
        ("a", 6),
        ("b", 6),
    ]


# -- catch-up ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("catchup", "count"), [("skip", 0), ("latest", 1), ("all", 60)])
def test_catchup_after_an_hour_down(catchup: str, count: int) -> None:
    table = Timetable(grace=5)
    table.add(every(60, catchup=catchup), None, now=T0)
    firings = table.due(T0 + 3600 + 30, never)  # ticks T0+60 .. T0+3600, all over 5 s old
    assert len(firings) == count
    if catchup == "latest":
        assert firings[0].fire_time == T0 + 3600
    if catchup == "all":
        assert [f.fire_time for f in firings] == [T0 + 60 * k for k in range(1, 61)]
    assert table.next_due() == T0 + 3660
    assert table.due(T0 + 3600 + 31, never) == []


def test_catchup_all_is_bounded_by_max_catchup() -> None:
    table = Timetable(grace=5)
    table.add(every(60, catchup="all", max_catchup=7), None, now=T0)
    firings = table.due(T0 + 3600 + 30, never)
    assert [f.fire_time for f in firings] == [T0 + 60 * k for k in range(54, 61)]  # the newest


def test_on_time_tick_fires_and_latest_adds_no_missed_one() -> None:
    table = Timetable(grace=60)
    table.add(every(60, catchup="latest"), None, now=T0)
    # down an hour, woken 20 s after a tick: that tick is on time, the older ones collapse into it
    firings = table.due(T0 + 3600 + 20, never)
    assert [f.fire_time for f in firings] == [T0 + 3600]


def test_every_second_after_thirty_days_down_is_quick() -> None:
    table = Timetable(grace=0.5)
    table.add(every(1, catchup="latest"), None, now=T0)
    began = time.perf_counter()
    firings = table.due(T0 + 30 * DAY + 0.75, never)
    assert time.perf_counter() - began < 0.5
    assert [f.fire_time for f in firings] == [T0 + 30 * DAY]
    assert table.next_due() == T0 + 30 * DAY + 1


def test_every_second_after_thirty_days_down_fires_the_on_time_ones() -> None:
    table = Timetable()  # grace 60: the last minute of ticks is on time, and each fires
    table.add(every(1), None, now=T0)
    began = time.perf_counter()
    firings = table.due(T0 + 30 * DAY, never)
    assert time.perf_counter() - began < 0.5
    assert [f.fire_time for f in firings] == [T0 + 30 * DAY - 60 + k for k in range(61)]


# -- overlap -----------------------------------------------------------------------------------


def test_overlap_skip_while_the_last_task_is_unfinished() -> None:
    table = Timetable()
    table.add(every(10, overlap="skip"), None, now=T0)
    [first] = table.due(T0 + 10, never)
    asked: list[bytes] = []

    def running(task_id: bytes) -> bool:
        asked.append(task_id)
        return True

    assert table.due(T0 + 20, running) == []
    assert asked == [first.task_id]
    schedule = table.get("tick")
    assert schedule is not None
    assert schedule.next_fire == T0 + 30  # advanced all the same
    assert schedule.last_id == first.task_id
    [third] = table.due(T0 + 30, never)
    assert third.fire_time == T0 + 30
    assert schedule.last_id == third.task_id and schedule.last_fire == T0 + 30


def test_overlap_skip_fires_one_of_a_catchup_batch() -> None:
    table = Timetable(grace=5)
    table.add(every(60, overlap="skip", catchup="all"), None, now=T0)
    firings = table.due(T0 + 3600 + 30, never)
    assert [f.fire_time for f in firings] == [T0 + 3600]


def test_overlap_allow_fires_regardless() -> None:
    table = Timetable()
    table.add(every(10), None, now=T0)
    table.due(T0 + 10, never)
    assert [f.fire_time for f in table.due(T0 + 20, lambda task_id: True)] == [T0 + 20]


# -- ids ---------------------------------------------------------------------------------------


def test_firing_id_is_deterministic_and_ulid_shaped() -> None:
    fire = T0 + 0.123
    raw = firing_id("nightly", fire)
    assert raw == firing_id("nightly", fire)
    assert len(raw) == ids.SIZE == 16
    assert int.from_bytes(raw[:6], "big") == round(fire * 1000)
    assert ids.id_time(raw) == pytest.approx(fire)
    assert ids.from_text(ids.to_text(raw)) == raw
    assert firing_id("hourly", fire) != raw
    assert firing_id("nightly", fire + 1) != raw
    assert firing_id("nightly", fire)[6:] != firing_id("nightly2", fire)[6:]


def test_firing_carries_its_id() -> None:
    table = Timetable()
    table.add(every(10), None, now=T0)
    [firing] = table.due(T0 + 10, never)
    assert firing.task_id == firing_id("tick", T0 + 10)
    assert firing.schedule is table.get("tick")


# -- pause, replace, remove, restore -----------------------------------------------------------


def test_next_due_ignores_paused_schedules() -> None:
    table = Timetable()
    table.add(every(10, "fast"), None, now=T0)
    table.add(every(30, "slow"), None, now=T0)
    assert table.pause("fast")
    assert table.next_due() == T0 + 30
    assert table.pause("slow")
    assert table.next_due() is None
    assert table.due(T0 + 1000, never) == []
    assert not table.pause("nope")


def test_resume_skips_ticks_passed_while_paused() -> None:
    table = Timetable()
    table.add(every(10), None, now=T0)
    table.pause("tick")
    assert table.resume("tick", now=T0 + 55)
    assert table.next_due() == T0 + 60  # still on the grid, the paused ticks not caught up
    assert [f.fire_time for f in table.due(T0 + 60, never)] == [T0 + 60]
    assert not table.resume("nope", now=T0)


def test_resume_cron_skips_paused_ticks() -> None:
    table = Timetable()
    table.add(ScheduleSpec("five", cron="*/5 * * * *"), None, now=utc(2026, 5, 1, 12))
    table.pause("five")
    table.resume("five", now=utc(2026, 5, 1, 13, 2))
    assert table.next_due() == utc(2026, 5, 1, 13, 5)


def test_add_replaces_by_name() -> None:
    table = Timetable()
    table.add(every(10), "old", now=T0)
    replaced = table.add(every(25), "new", now=T0 + 3)
    assert len(table) == 1
    assert table.get("tick") is replaced and replaced.payload == "new"
    assert table.next_due() == T0 + 28  # the old entry in the heap no longer counts
    assert table.due(T0 + 20, never) == []
    assert [f.fire_time for f in table.due(T0 + 28, never)] == [T0 + 28]


def test_remove() -> None:
    table = Timetable()
    table.add(every(10), None, now=T0)
    assert table.remove("tick")
    assert not table.remove("tick")
    assert len(table) == 0 and table.get("tick") is None
    assert table.next_due() is None
    assert table.due(T0 + 100, never) == []


def test_iter_sorted_by_name() -> None:
    table = Timetable()
    for name in ("c", "a", "b"):
        table.add(every(10, name), None, now=T0)
    assert [s.spec.name for s in table] == ["a", "b", "c"]


def test_restore_never_fires_a_tick_again() -> None:
    table = Timetable()
    table.add(every(10), "frames", now=T0)
    [fired] = table.due(T0 + 10, never)
    stored = table.get("tick")
    assert stored is not None
    saved = Schedule(
        stored.spec, stored.payload, stored.next_fire, stored.last_fire, stored.last_id
    )
    # the router restarts 3 s later, within the tick it already fired
    restarted = Timetable()
    restarted.restore(saved)
    assert restarted.next_due() == T0 + 20
    assert restarted.due(T0 + 13, never) == []
    [nxt] = restarted.due(T0 + 20, never)
    assert nxt.fire_time == T0 + 20 and nxt.task_id != fired.task_id


def test_restore_keeps_paused_and_grid() -> None:
    table = Timetable()
    table.restore(Schedule(every(10, "p"), None, next_fire=T0 + 7, paused=True))
    table.restore(Schedule(every(10, "q"), None, next_fire=T0 + 7))
    assert table.next_due() == T0 + 7
    firings = table.due(T0 + 30, never)
    assert [(f.name, f.fire_time) for f in firings] == [
        ("q", T0 + 7),
        ("q", T0 + 17),
        ("q", T0 + 27),
    ]


def test_many_replacements_keep_the_heap_small() -> None:
    table = Timetable()
    for i in range(1000):
        table.add(every(10 + i % 3), None, now=T0)
    assert len(table._heap) < 200
    assert table.next_due() == T0 + 10  # i = 999: every 10


# -- specs -------------------------------------------------------------------------------------


def test_spec_json_round_trip_and_describe() -> None:
    spec = ScheduleSpec("report", cron="*/5  * * * *", tz="Europe/Berlin", catchup="all")
    assert spec.describe() == "cron */5 * * * * (Europe/Berlin)"
    assert ScheduleSpec.from_json(spec.to_json()) == spec
    assert every(30).describe() == "every 30 s"
    assert every(1.5).describe() == "every 1.5 s"
    assert ScheduleSpec.from_json({"name": "n", "every": 30}) == every(30, "n")
    assert every(30).to_json()["every"] == 30.0


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"cron": "* * * * *", "every": 10}, "exactly one"),
        ({}, "exactly one"),
        ({"cron": "61 * * * *"}, "minute"),
        ({"cron": "* * *"}, "fields"),
        ({"cron": "0 0 * * * *"}, "fields"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "time zone"),
        ({"cron": "* * * * *", "tz": "../etc"}, "time zone"),
        ({"every": 0.5}, "at least 1"),
        ({"every": float("nan")}, "every"),
        ({"every": True}, "every"),
        ({"every": 10, "catchup": "some"}, "catchup"),
        ({"every": 10, "overlap": "queue"}, "overlap"),
        ({"every": 10, "max_catchup": 0}, "max_catchup"),
    ],
)
def test_bad_specs_say_what_is_wrong(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ScheduleError, match=word):
        ScheduleSpec("bad", **kwargs)


@pytest.mark.parametrize("name", ["", "x" * 201])
def test_bad_names(name: str) -> None:
    with pytest.raises(ScheduleError, match="name"):
        ScheduleSpec(name, every=10)


def test_from_json_refuses_unknown_keys_and_validates() -> None:
    with pytest.raises(ScheduleError, match="unknown.*colour"):
        ScheduleSpec.from_json({"name": "n", "every": 10, "colour": "red"})
    with pytest.raises(ScheduleError, match="every"):
        ScheduleSpec.from_json({"name": "n", "every": "10"})
    with pytest.raises(ScheduleError, match="name"):
        ScheduleSpec.from_json({"every": 10})
    assert issubclass(ScheduleError, ValueError)
