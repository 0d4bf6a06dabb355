"""Queue naming and dead-letter vocabulary shared by nodes, submitters and the router.

Physical names carry an optional prefix so several deployments (or test runs) can share one vhost; Dramatiq
and the actors only see logical names.
"""

from __future__ import annotations

from bisect import bisect_left
from enum import StrEnum
from typing import Any

DEAD_LETTER_EXCHANGE = "burrow.dead-letter"
REASON_HEADER = "x-burrow-reason"
DETAIL_HEADER = "x-burrow-detail"

#: The fanout exchange a submitter's cancel is broadcast on: every worker process binds a queue of its own to it
#: (``node.middleware.cancel``) and stops the job at once if it runs it. The record stays the authority.
CANCEL_EXCHANGE = "burrow.cancel"

#: The durable queue of jobs whose budget is spent, consumed by the cloud-side router actor.
FAILED_JOBS_QUEUE = "failed-jobs"
FAILED_JOBS_ACTOR = "route_failed_job"

#: Fixed delays (milliseconds) with one wait queue each.  One queue per bucket because per-message expiry in
#: a shared queue blocks head-of-line: a short delay would wait behind a long one.
WAIT_BUCKETS_MS: tuple[int, ...] = (
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    900_000, 1_800_000, 3_600_000, 7_200_000, 21_600_000, 43_200_000, 86_400_000,
)  # fmt: skip


class DeadLetterReason(StrEnum):
    """Why a message sits in a dead-letter queue (``x-burrow-reason``, or the broker's ``x-death``)."""

    MALFORMED = "malformed"  # a field cannot be trusted, or the actor refused its input
    EXPIRED = "expired"  # past its TTL before it could (re)start
    STALE = "stale"  # a copy of a job whose record is already final
    DELIVERY_LIMIT = "delivery_limit"  # the broker's: delivered too often without an ack
    REJECTED = "rejected"  # the broker's: nacked without requeue (a fallback when publishing failed)
    BAD_SIGNATURE = "bad-signature"  # signed jobs required, and this one is unsigned or altered


def wait_bucket_ms(delay_ms: int) -> int:
    """The wait bucket for a delay: the smallest bucket at least ``delay_ms`` long (capped at the largest)."""
    index = bisect_left(WAIT_BUCKETS_MS, max(0, delay_ms))
    return WAIT_BUCKETS_MS[min(index, len(WAIT_BUCKETS_MS) - 1)]


def wait_queue_name(prefix: str, bucket_ms: int) -> str:
    return f"{prefix}burrow.wait.{bucket_ms}ms"


def dead_letter_queue_name(queue_name: str) -> str:
    """Dramatiq's name for a queue's dead-letter queue (``Q.XQ``)."""
    return f"{queue_name}.XQ"


def work_queue_arguments(*, dead_letter_exchange: str, dead_letter_queue: str, delivery_limit: int) -> dict:
    """Arguments for a work queue: quorum, bounded redeliveries, at-least-once dead-lettering."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": dead_letter_exchange,
        "x-dead-letter-routing-key": dead_letter_queue,
        # At-least-once dead-lettering needs reject-publish; without it a dead letter can be lost in transit.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def wait_queue_arguments(bucket_ms: int) -> dict:
    """Arguments for a wait queue: messages expire after ``bucket_ms`` and go back by their own routing key."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": bucket_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def death_reason(headers: dict[str, Any] | None) -> str | None:
    """Why a dead letter died: Burrow's own reason header, else the broker's newest ``x-death`` reason.

    ``x-death`` lists the newest death first; a wait queue's ``expired`` entry is skipped since passing a
    wait queue is how delays work, not a death.
    """
    headers = headers or {}
    reason = headers.get(REASON_HEADER)
    if reason:
        return _text(reason)
    for death in deaths(headers):
        if ".wait." in _text(death.get("queue", "")) and _text(death.get("reason", "")) == "expired":
            continue
        return _text(death.get("reason"))
    return None


def deaths(headers: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The broker's ``x-death`` entries, newest first; what is not one (any publisher may set any header) is
    left out."""
    entries = (headers or {}).get("x-death")
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
