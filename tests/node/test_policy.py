"""The one decision point, without a broker: every "what happens next" for a job."""

from __future__ import annotations

import pytest

from node.attempt.policy import Action, Limits, backoff_s, decide, expiry, is_expired
from node.contract.job_options import JobOptions
from node.contract.queues import DeadLetterReason
from node.contract.record import JobStatus, Outcome


def test_backoff_grows_with_equal_jitter_and_caps():
    for failures, step in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)]:
        assert backoff_s(failures, 1.0, 30.0, 0.0) == step / 2
        assert backoff_s(failures, 1.0, 30.0, 1.0) == step
    # never shorter than the previous retry could have been
    assert backoff_s(3, 1.0, 30.0, 0.0) >= backoff_s(2, 1.0, 30.0, 1.0)
    assert backoff_s(0, 1.0, 30.0, 0.5) == 0.0
    assert backoff_s(10_000, 1.0, 30.0, 0.5) == 22.5  # no overflow


def test_expiry_prefers_the_message_then_the_actor_ttl():
    assert expiry(500.0, 100.0, 60.0) == 500.0
    assert expiry(None, 100.0, 60.0) == 160.0
    assert expiry(None, 100.0, None) is None
    assert is_expired(160.0, 160.0) and not is_expired(160.0, 159.9) and not is_expired(None, 1e12)


LIMITS = Limits(max_failures=3, max_interruptions=5, min_backoff_s=10.0, max_backoff_s=10.0, delivery_limit=3)


def run(outcome, *, failures=0, interruptions=0, expires_at=None, status=JobStatus.RUNNING, **kw):
    job = JobOptions(job_id="j", failures=failures, interruptions=interruptions, **kw.pop("job", {}))
    return decide(
        job, limits=LIMITS, status=status, outcome=outcome, now=1000.0, node_id="n1", expires_at=expires_at, **kw
    )


@pytest.mark.parametrize(
    ("outcome", "failures", "interruptions", "expires_at", "action"),
    [
        (Outcome.FAILED, 0, 0, None, Action.RETRY),
        (Outcome.FAILED, 2, 0, None, Action.RETRY),
        (Outcome.FAILED, 3, 0, None, Action.GIVE_UP),
        (Outcome.CRASHED, 3, 0, None, Action.GIVE_UP),
        (Outcome.TIMED_OUT, 0, 0, None, Action.RETRY),
        (Outcome.FAILED, 0, 0, 1004.0, Action.DEAD_LETTER),  # would expire during the cooldown
        (Outcome.INTERRUPTED, 0, 4, None, Action.HAND_BACK),
        (Outcome.INTERRUPTED, 3, 4, None, Action.HAND_BACK),  # interruptions never spend the failure budget
        (Outcome.LOST, 0, 5, None, Action.GIVE_UP),
        (Outcome.INTERRUPTED, 0, 0, 999.0, Action.DEAD_LETTER),
        (Outcome.FENCED, 0, 0, None, Action.DROP),
        (Outcome.SUCCEEDED, 0, 0, None, Action.SUCCEED),
        (Outcome.INVALID_INPUT, 0, 0, None, Action.DEAD_LETTER),
        (Outcome.NOT_STARTED, 0, 0, None, Action.RETRY),
    ],
)
def test_decision_after_an_attempt(outcome, failures, interruptions, expires_at, action):
    decision = run(outcome, failures=failures, interruptions=interruptions, expires_at=expires_at)
    assert decision.action is action


def test_counters_travel_in_the_decisions_job():
    retry = run(Outcome.CRASHED, failures=1, jitter=1.0)
    assert retry.job.failures == 2 and retry.delay_s == 10.0 and retry.status is JobStatus.QUEUED
    handed = run(Outcome.INTERRUPTED, interruptions=1)
    # a node going away stops consuming first: it need not avoid the job when it comes back
    assert handed.job.interruptions == 2 and handed.job.avoid_nodes == () and handed.delay_s == 0
    lost = run(Outcome.LOST)
    assert lost.job.interruptions == 1 and lost.job.avoid_nodes == ()  # a lost node is not avoided
    gave_up = run(Outcome.FAILED, failures=3)
    assert gave_up.status is JobStatus.FAILED and "max_failures=3" in gave_up.reason
    not_started = run(Outcome.NOT_STARTED, failures=1)
    assert not_started.job.failures == 1  # nobody's fault: not counted


def test_arrival_decisions():
    assert run(None).action is Action.RUN
    assert run(None, status=JobStatus.SUCCEEDED).action is Action.ACK
    stale = run(None, status=JobStatus.EXPIRED)
    assert stale.action is Action.DEAD_LETTER and stale.dead_letter_reason is DeadLetterReason.STALE
    expired = run(None, expires_at=1000.0)
    assert expired.dead_letter_reason is DeadLetterReason.EXPIRED and expired.status is JobStatus.EXPIRED
    assert run(None, delivery_count=3).action is Action.GIVE_UP  # the broker's last delivery
    assert run(None, live_duplicate=True).action is Action.RETRY
    settle = run(None, job={"unrecorded_success": "a1"})
    assert settle.action is Action.SETTLE and settle.status is JobStatus.SUCCEEDED
    # a node the job must avoid never runs it: the router, which knows the live nodes, places it
    avoided = run(None, job={"avoid_nodes": ("n1", "n2")})
    assert avoided.action is Action.REROUTE and avoided.job.avoid_nodes == ("n1", "n2")
    assert run(None, job={"avoid_nodes": ("n2",)}).action is Action.RUN
