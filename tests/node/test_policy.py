"""Pure lifecycle policy: backoff, expiry, decisions after an attempt."""

from __future__ import annotations

import random

import pytest

from node.policy import Action, Outcome, after_attempt, backoff_s, expiry, is_expired


def test_backoff_grows_with_equal_jitter_and_caps():
    rng = random.Random(1)
    for failures, step in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)]:
        delays = [backoff_s(failures, 1.0, 30.0, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 4  # really jittered
    # never shorter than the previous retry could have been
    assert min(backoff_s(3, 1.0, 30.0, rng) for _ in range(200)) >= max(
        backoff_s(2, 1.0, 30.0, rng) for _ in range(200)
    )
    assert backoff_s(0, 1.0, 30.0) == 0.0


def test_expiry_prefers_the_message_then_the_actor_ttl():
    assert expiry(500.0, 100.0, 60.0) == 500.0
    assert expiry(None, 100.0, 60.0) == 160.0
    assert expiry(None, 100.0, None) is None
    assert is_expired(160.0, 160.0) and not is_expired(160.0, 159.9) and not is_expired(None, 1e12)


LIMITS = {"max_failures": 3, "max_interruptions": 5, "now": 1000.0, "cooldown_s": 10.0}


@pytest.mark.parametrize(
    ("outcome", "failures", "interruptions", "expires_at", "action"),
    [
        (Outcome.FAILED, 1, 0, None, Action.RETRY),
        (Outcome.FAILED, 3, 0, None, Action.RETRY),
        (Outcome.FAILED, 4, 0, None, Action.GIVE_UP),
        (Outcome.CRASHED, 4, 0, None, Action.GIVE_UP),
        (Outcome.TIMED_OUT, 1, 0, None, Action.RETRY),
        (Outcome.FAILED, 1, 0, 1005.0, Action.EXPIRE),  # would expire during the cooldown
        (Outcome.INTERRUPTED, 0, 5, None, Action.HAND_BACK),
        (Outcome.INTERRUPTED, 3, 5, None, Action.HAND_BACK),  # interruptions never spend the failure budget
        (Outcome.LOST, 0, 6, None, Action.GIVE_UP),
        (Outcome.INTERRUPTED, 0, 1, 999.0, Action.EXPIRE),
        (Outcome.FENCED, 0, 0, None, Action.DROP),
    ],
)
def test_decision_after_an_attempt(outcome, failures, interruptions, expires_at, action):
    decision = after_attempt(outcome, failures=failures, interruptions=interruptions, expires_at=expires_at, **LIMITS)
    assert decision.action is action
    if action is Action.RETRY:
        assert decision.delay_s == 10.0
    if action is Action.HAND_BACK:
        assert decision.delay_s == 0.0


def test_success_needs_no_decision():
    with pytest.raises(ValueError):
        after_attempt(Outcome.SUCCEEDED, failures=0, interruptions=0, expires_at=None, **LIMITS)
