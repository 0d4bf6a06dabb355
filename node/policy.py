"""Pure policy for the job lifecycle: backoff, expiry and what to do after an attempt.

No clock, no randomness of its own, no I/O: callers pass ``now`` and a random source, so every decision is
unit-tested without a broker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


def backoff_s(failures: int, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Cooldown before retry number ``failures`` (1 = first retry): exponential with "equal jitter".

    Half of the exponential step is fixed and half random, so delays spread out (no thundering herd) yet
    never shrink from one retry to the next: retry n+1 waits at least as long as retry n could.
    """
    if failures <= 0:
        return 0.0
    step = min(max_s, min_s * 2 ** (failures - 1))
    rng = rng or random.Random()
    return step / 2 + rng.uniform(0, step / 2)


def is_expired(expires_at: float | None, now: float) -> bool:
    """A job past its expiry must not start (nor be retried or re-dispatched)."""
    return expires_at is not None and now >= expires_at


def expiry(message_expires_at: float | None, enqueued_at_s: float, actor_ttl_s: float | None) -> float | None:
    """The job's absolute expiry: the message's own, else the actor's default TTL from first enqueue."""
    if message_expires_at is not None:
        return message_expires_at
    if actor_ttl_s is not None:
        return enqueued_at_s + actor_ttl_s
    return None


class Outcome(Enum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the actor raised
    TIMED_OUT = "timed_out"  # exceeded its reservation (max run time)
    INTERRUPTED = "interrupted"  # preempted (SIGTERM) and handed back
    CRASHED = "crashed"  # its process died on this node (found on redelivery)
    LOST = "lost"  # its node vanished (found on redelivery elsewhere)
    FENCED = "fenced"  # a newer attempt of the same job took over


#: Outcomes that spend the failure budget; the others (interruptions) are capped separately.
FAILURE_OUTCOMES = frozenset({Outcome.FAILED, Outcome.TIMED_OUT, Outcome.CRASHED})
INTERRUPTION_OUTCOMES = frozenset({Outcome.INTERRUPTED, Outcome.LOST})


class Action(Enum):
    RETRY = "retry"  # publish again after a cooldown
    HAND_BACK = "hand_back"  # publish again now, for another node
    GIVE_UP = "give_up"  # to the failed-jobs queue
    EXPIRE = "expire"  # dead-letter with reason "expired"
    DROP = "drop"  # nothing more to do (a fenced attempt: the newer one carries on)


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    reason: str = ""


def after_attempt(
    outcome: Outcome,
    *,
    failures: int,
    interruptions: int,
    max_failures: int,
    max_interruptions: int,
    expires_at: float | None,
    now: float,
    cooldown_s: float,
) -> Decision:
    """Decide what happens to a job whose attempt ended with ``outcome`` (other than success).

    Args:
        outcome: How the attempt ended.
        failures: Failures so far, *including* this attempt if it failed.
        interruptions: Interruptions so far, *including* this attempt if it was interrupted.
        max_failures: Failures allowed before giving up (retries = max_failures).
        max_interruptions: Interruptions allowed before giving up.
        expires_at: The job's absolute expiry, if any.
        now: Current time (Unix seconds).
        cooldown_s: The cooldown a retry would wait (from ``backoff_s``).
    """
    if outcome is Outcome.FENCED:
        return Decision(Action.DROP, reason="a newer attempt owns the job")
    if outcome in FAILURE_OUTCOMES:
        if failures > max_failures:
            return Decision(Action.GIVE_UP, reason=f"failed {failures} times (max_failures={max_failures})")
        if is_expired(expires_at, now + cooldown_s):
            return Decision(Action.EXPIRE, reason="expired before its next retry")
        return Decision(Action.RETRY, delay_s=cooldown_s, reason=f"failure {failures} of {max_failures} allowed")
    if outcome in INTERRUPTION_OUTCOMES:
        if interruptions > max_interruptions:
            return Decision(
                Action.GIVE_UP, reason=f"interrupted {interruptions} times (max_interruptions={max_interruptions})"
            )
        if is_expired(expires_at, now):
            return Decision(Action.EXPIRE, reason="expired before it could be re-run")
        return Decision(Action.HAND_BACK, reason=f"interruption {interruptions}")
    raise ValueError(f"no decision needed for {outcome}")
