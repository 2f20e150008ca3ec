"""The trimmer hands freed heap back only after work, when idle, at most once a period."""

from __future__ import annotations

from squall import memory


def test_the_trimmer_trims_only_after_work_and_at_most_every_period() -> None:
    now = [0.0]
    trimmer = memory.Trimmer(clock=lambda: now[0])
    now[0] = 100.0
    assert not trimmer.idle()  # nothing was done since it started
    trimmer.worked()
    assert trimmer.idle() is (memory._malloc_trim is not None)
    trimmer.worked()
    now[0] += 1.0
    assert not trimmer.idle()  # too soon after the last
    now[0] += memory.TRIM_EVERY
    assert trimmer.idle() is (memory._malloc_trim is not None)
    assert not trimmer.idle()  # nothing done since
