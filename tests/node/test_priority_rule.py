"""Which jobs a slot may hold at once (``node.broker.priority.may_take``): a pure rule, no broker."""

from __future__ import annotations

from node.broker.priority import may_take


def test_an_idle_slot_takes_from_any_queue():
    assert may_take(1, []) and may_take(4, [])


def test_a_job_of_a_prefetch_1_queue_never_has_company():
    assert not may_take(1, [4])  # short jobs running: no GPU job joins them
    assert not may_take(4, [1])  # a GPU job running: no short job joins it
    assert not may_take(1, [1])


def test_short_jobs_run_side_by_side_up_to_the_smallest_prefetch_among_them():
    assert may_take(4, [4, 4, 4]) and not may_take(4, [4, 4, 4, 4])
    assert not may_take(2, [4, 4])  # a prefetch-2 queue's job would be the third held
    assert not may_take(4, [4, 2])  # a held prefetch-2 job allows no third
    assert may_take(4, [4])
