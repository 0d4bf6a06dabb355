"""The lease of a long job (``node.attempt.lease``): pure timing and verdicts, no broker."""

from __future__ import annotations

import pytest

from node.attempt.lease import MAX_RENEW_EVERY_S, Verdict, check_every_s, lease_timing, verdict
from node.contract.record import (
    JobStatus,
    Outcome,
    begin_attempt,
    end_attempt,
    new_record,
    release_attempt,
    renew_lease,
    set_status,
)


def _running(attempt_id: str = "a1", *, renew_every_s: float = 0.5) -> dict:
    record = new_record("job")
    begin_attempt(record, {"attempt_id": attempt_id, "node": "n1", "started_at": 1.0})
    assert release_attempt(record, attempt_id, now=2.0, renew_every_s=renew_every_s)
    return record


def test_timing_releases_at_half_the_timeout_and_checks_after_four_renewals():
    timing = lease_timing(5)
    assert timing.release_after_s == 2.5
    assert timing.renew_every_s == 0.5
    assert timing.check_every_s == 2.0  # the 2 s wait bucket
    default = lease_timing(1800)  # RabbitMQ's default consumer_timeout
    assert default.release_after_s == 900
    assert default.renew_every_s == MAX_RENEW_EVERY_S
    assert default.check_every_s >= 4 * MAX_RENEW_EVERY_S
    assert lease_timing(0) is None  # the broker has no timeout: never release


@pytest.mark.parametrize("renew_s", [0.1, 0.5, 1.0, 2.5, 10.0])
def test_a_check_period_always_spans_at_least_four_renewals(renew_s):
    assert check_every_s(renew_s) >= 4 * renew_s


def test_a_renewed_lease_is_looked_at_again_with_the_new_count():
    record = _running()
    assert renew_lease(record, "a1", now=3.0)
    look = verdict(record, "a1", seen=0)
    assert (look.verdict, look.renewals, look.check_every_s) == (Verdict.RENEW, 1, 2.0)


def test_a_lease_not_renewed_over_a_period_means_the_node_is_gone():
    record = _running()
    renew_lease(record, "a1", now=3.0)
    assert verdict(record, "a1", seen=1).verdict is Verdict.LOST


def test_the_check_period_is_the_releasing_nodes_not_the_checkers():
    record = _running(renew_every_s=10.0)
    assert verdict(record, "a1", seen=0).check_every_s == check_every_s(10.0)


def test_a_lease_copy_is_dropped_once_its_attempt_is_over_or_superseded():
    ended = _running()
    end_attempt(ended, "a1", outcome=Outcome.INTERRUPTED, error=None, now=4.0, status=JobStatus.QUEUED)
    assert verdict(ended, "a1", seen=0).verdict is Verdict.DROP

    superseded = _running()
    begin_attempt(superseded, {"attempt_id": "a2", "node": "n2", "started_at": 5.0})
    assert verdict(superseded, "a1", seen=0).verdict is Verdict.DROP

    final = _running()
    set_status(final, JobStatus.CANCELLED)
    assert verdict(final, "a1", seen=0).verdict is Verdict.DROP


def test_a_lease_copy_of_an_attempt_the_record_does_not_know_is_set_aside_not_dropped():
    # A node records the release before it publishes the copy: a copy that finds nothing is not one of ours.
    assert verdict(None, "a1", seen=0).verdict is Verdict.UNKNOWN
    assert verdict(_running(), "unknown", seen=0).verdict is Verdict.UNKNOWN


def test_a_lost_attempt_may_not_renew_nor_release_again():
    record = _running()
    end_attempt(record, "a1", outcome=Outcome.LOST, error=None, now=4.0, status=JobStatus.QUEUED)
    assert not renew_lease(record, "a1", now=5.0)
    assert not release_attempt(record, "a1", now=5.0, renew_every_s=0.5)


def test_a_lease_this_code_did_not_write_counts_as_silent():
    record = _running()
    record["attempts"][0]["renewals"] = "many"
    record["attempts"][0]["lease_renew_s"] = 1e9
    look = verdict(record, "a1", seen=0)
    assert look.verdict is Verdict.LOST
    assert look.check_every_s == check_every_s(MAX_RENEW_EVERY_S)
