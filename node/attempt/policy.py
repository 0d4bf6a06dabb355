"""The one decision point: what happens next to a job. Pure: no clock, no randomness, no I/O.

``decide`` is called when a message arrives (``outcome`` is ``None``, or the outcome of an earlier attempt
that ended without a word and was just found) and when an attempt ends. Its inputs are the job options that
travel with the message, the actor's limits, the record's status, the outcome, the broker's delivery count
and ``now``; its output is one ``Decision`` that ``node.attempt.routing`` carries out. Counters are updated
in the decision's ``job``, so they travel with the message that carries the job on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..contract.job_options import JobOptions
from ..contract.queues import DeadLetterReason
from ..contract.record import FAILURE_OUTCOMES, FINAL_STATUSES, INTERRUPTION_OUTCOMES, JobStatus, Outcome

#: Delay before a job that could not start (storage or broker trouble) is offered again; not counted.
NOT_STARTED_DELAY_S = 30.0
#: Delay before a copy of a job still running in a live process of this node is looked at again.
DUPLICATE_DELAY_S = 30.0
#: Delay before a job whose success could not be recorded comes back to have it recorded (not run again).
SETTLE_DELAY_S = 5.0


class Action(Enum):
    RUN = "run"  # start an attempt here, now
    ACK = "ack"  # nothing to do: the job already succeeded or was cancelled (or this is a duplicate copy)
    SETTLE = "settle"  # record a success that happened but was not recorded, then ack
    SUCCEED = "succeed"  # record the success, then ack
    RETRY = "retry"  # publish again after ``delay_s`` (a cooldown, or a pause that is nobody's fault)
    HAND_BACK = "hand_back"  # publish again now, for any node
    GIVE_UP = "give_up"  # record *failed*, report to failed-jobs with the history
    DEAD_LETTER = "dead_letter"  # into the queue's dead-letter queue with ``dead_letter_reason``
    DROP = "drop"  # ack and do nothing: a newer attempt owns the job
    REROUTE = "reroute"  # this node must not run it (``avoid_nodes``): back to the router, which knows the others


@dataclass(frozen=True)
class Limits:
    """The actor's policy for one job (message option → actor option → node default)."""

    max_failures: int = 3
    max_interruptions: int = 20
    min_backoff_s: float = 5.0
    max_backoff_s: float = 600.0
    delivery_limit: int = 3


@dataclass(frozen=True)
class Decision:
    """What to do with the job, and the job options to carry on with (counters updated)."""

    action: Action
    job: JobOptions
    reason: str = ""
    delay_s: float = 0.0
    status: JobStatus | None = None  # the record's status after this decision (None: leave it)
    dead_letter_reason: DeadLetterReason | None = None


def backoff_s(failures: int, min_s: float, max_s: float, jitter: float) -> float:
    """Cooldown before retry number ``failures`` (1 = first retry): exponential with "equal jitter".

    Half of the exponential step is fixed and half random (``jitter`` in [0, 1]), so delays spread out (no
    thundering herd) yet never shrink from one retry to the next.
    """
    if failures <= 0:
        return 0.0
    step = min(max_s, min_s * 2 ** min(failures - 1, 60))
    return step / 2 + step / 2 * min(1.0, max(0.0, jitter))


def is_expired(expires_at: float | None, now: float) -> bool:
    """A job past its expiry must not start (nor be retried or re-dispatched)."""
    return expires_at is not None and now >= expires_at


def expiry(message_expires_at: float | None, enqueued_at_s: float, actor_ttl_s: float | None) -> float | None:
    """The job's absolute expiry: the message's own, else the actor's TTL from first enqueue."""
    if message_expires_at is not None:
        return message_expires_at
    if actor_ttl_s is not None:
        return enqueued_at_s + actor_ttl_s
    return None


def decide(
    job: JobOptions,
    *,
    limits: Limits,
    status: JobStatus | None,
    outcome: Outcome | None,
    now: float,
    node_id: str,
    expires_at: float | None,
    delivery_count: int = 0,
    live_duplicate: bool = False,
    cancelled: bool = False,
    jitter: float = 0.5,
) -> Decision:
    """Decide what happens next to ``job``.

    Args:
        job: The job options the message carries (counters not yet including ``outcome``).
        limits: The actor's limits and the queue's delivery limit.
        status: The record's status (``None``: no record yet).
        outcome: How the attempt just ended, or how an earlier one ended without a word (found on arrival);
            ``None`` for a plain arrival.
        now: Current time (Unix seconds).
        node_id: This node.
        expires_at: The job's absolute expiry, if any.
        delivery_count: The broker's count of earlier deliveries of this message that were not acked.
        live_duplicate: This message is a copy of a job still running in a live process of this node (the
            broker redelivered it after a connection loss).
        cancelled: The job's submitter asked to cancel it (the record says so).
        jitter: A random number in [0, 1] for the cooldown.
    """
    if status is JobStatus.SUCCEEDED and outcome is not Outcome.SUCCEEDED:
        return Decision(Action.ACK, job, reason="already succeeded")
    if outcome is Outcome.SUCCEEDED:
        return Decision(Action.SUCCEED, job, reason="succeeded", status=JobStatus.SUCCEEDED)
    if outcome is Outcome.FENCED:
        return Decision(Action.DROP, job, reason="a newer attempt owns the job")
    if status is JobStatus.CANCELLED:
        return Decision(Action.ACK, job, reason="cancelled")
    if cancelled or outcome is Outcome.CANCELLED:
        # Whatever else happened, a cancelled job is never retried, handed back or re-dispatched.
        return Decision(Action.ACK, job, reason="cancelled", status=JobStatus.CANCELLED)
    if status in FINAL_STATUSES:
        return Decision(
            Action.DEAD_LETTER,
            job,
            reason=f"a copy of a job that is already {status.value}",
            dead_letter_reason=DeadLetterReason.STALE,
        )
    if outcome is Outcome.INVALID_INPUT:
        return Decision(
            Action.DEAD_LETTER,
            job,
            reason="the actor refused its input",
            status=JobStatus.FAILED,
            dead_letter_reason=DeadLetterReason.MALFORMED,
        )
    if outcome is Outcome.NOT_STARTED:
        return Decision(
            Action.RETRY, job, reason="could not start (storage or broker trouble)", delay_s=NOT_STARTED_DELAY_S
        )
    if outcome is None:
        return _on_arrival(job, limits, now, node_id, expires_at, delivery_count, live_duplicate)
    return _after(job, limits, outcome, now, node_id, expires_at, jitter)


def _on_arrival(
    job: JobOptions,
    limits: Limits,
    now: float,
    node_id: str,
    expires_at: float | None,
    delivery_count: int,
    live_duplicate: bool,
) -> Decision:
    if job.unrecorded_success is not None:
        return Decision(Action.SETTLE, job, reason="recording an earlier success", status=JobStatus.SUCCEEDED)
    if is_expired(expires_at, now):
        return _expire(job, "expired before it started")
    if live_duplicate:
        return Decision(Action.RETRY, job, reason="still running in a live process here", delay_s=DUPLICATE_DELAY_S)
    if delivery_count >= limits.delivery_limit:
        # The broker's last delivery: something kills the node before it can even account for the job.
        return Decision(
            Action.GIVE_UP,
            job,
            reason=f"delivered {delivery_count + 1} times without an ack (delivery limit {limits.delivery_limit})",
            status=JobStatus.FAILED,
        )
    if node_id in job.avoid_nodes:
        # Only the router knows whether another live node can take it (the registry): ask it.
        return Decision(Action.REROUTE, job, reason=f"{node_id} is in the job's avoid_nodes")
    return Decision(Action.RUN, job, reason="start", status=JobStatus.RUNNING)


def _after(
    job: JobOptions,
    limits: Limits,
    outcome: Outcome,
    now: float,
    node_id: str,
    expires_at: float | None,
    jitter: float,
) -> Decision:
    if outcome in FAILURE_OUTCOMES:
        job = job.replace(failures=job.failures + 1)
        if job.failures > limits.max_failures:
            return _give_up(job, f"{outcome.value} {job.failures} times (max_failures={limits.max_failures})")
        cooldown = backoff_s(job.failures, limits.min_backoff_s, limits.max_backoff_s, jitter)
        if is_expired(expires_at, now + cooldown):
            return _expire(job, "expires before its next retry")
        return Decision(
            Action.RETRY,
            job,
            reason=f"{outcome.value}: failure {job.failures} of {limits.max_failures} allowed",
            delay_s=cooldown,
            status=JobStatus.QUEUED,
        )
    if outcome in INTERRUPTION_OUTCOMES:
        job = job.replace(interruptions=job.interruptions + 1)
        if job.interruptions > limits.max_interruptions:
            return _give_up(
                job, f"interrupted {job.interruptions} times (max_interruptions={limits.max_interruptions})"
            )
        if is_expired(expires_at, now):
            return _expire(job, "expired before it could run again")
        return Decision(
            Action.HAND_BACK, job, reason=f"{outcome.value}: interruption {job.interruptions}", status=JobStatus.QUEUED
        )
    raise ValueError(f"no decision for outcome {outcome}")


def _give_up(job: JobOptions, reason: str) -> Decision:
    return Decision(Action.GIVE_UP, job, reason=reason, status=JobStatus.FAILED)


def _expire(job: JobOptions, reason: str) -> Decision:
    return Decision(
        Action.DEAD_LETTER, job, reason=reason, status=JobStatus.EXPIRED, dead_letter_reason=DeadLetterReason.EXPIRED
    )
