"""Jobs longer than the broker's ``consumer_timeout``: the delivery is released early and a lease guards the job.

RabbitMQ closes a channel whose delivery stays unacked past ``consumer_timeout`` (30 min by default, global
on 3.10) and redelivers the job while it still runs. Turning the timeout off (as the SaladCloud guide does)
also turns off the broker's protection against stuck consumers, so a node does this instead:

1. Once an attempt has run ``release_after_s`` (half the timeout), the node notes ``released_at`` and its
   renewal interval ``lease_renew_s`` in the attempt's record entry, publishes a *lease copy* of the job
   (the same message with ``lease_of`` = the attempt's id) into the wait queue of ``check_every_s``, then
   acks the delivery. The worker's consumer takes nothing more from that queue until the job ends, so the
   slot still runs one job at a time.
2. While it runs, the attempt renews its lease: every ``renew_every_s`` it bumps ``renewals`` in its entry.
3. A lease copy that arrives at a node is looked at (``verdict``): the job is over or the attempt ended or
   was superseded → dropped (the attempt's end sent the job on); the count moved since the copy was
   published → published again with the new count; the count did not move over a whole check period →
   the attempt's node is gone: the attempt is closed like any attempt that ended without a word and the job
   runs again from its checkpoint.

The count, not a timestamp, is compared, so clocks of different machines never need to agree. A check
period is four renewals long: a node must miss all four before its job is declared lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..contract.queues import wait_bucket_ms
from ..contract.record import FINAL_STATUSES, newest_attempt_id, status_of

#: Renewals per check period: how many in a row a live node may miss before its job is declared lost.
RENEWALS_PER_CHECK = 4
#: The longest interval between renewals (a long ``consumer_timeout`` needs no rarer ones).
MAX_RENEW_EVERY_S = 10.0


@dataclass(frozen=True)
class LeaseTiming:
    """When a running attempt releases its delivery, how often it renews its lease, how often it is checked."""

    release_after_s: float
    renew_every_s: float
    check_every_s: float


def check_every_s(renew_every_s: float) -> float:
    """How long a lease copy waits between looks: the smallest wait bucket (one wait queue per fixed delay)
    at least ``RENEWALS_PER_CHECK`` renewals long."""
    return wait_bucket_ms(int(renew_every_s * RENEWALS_PER_CHECK * 1000)) / 1000


def lease_timing(consumer_timeout_s: float) -> LeaseTiming | None:
    """The lease timing for a broker whose ``consumer_timeout`` is ``consumer_timeout_s`` (0: it has none,
    and deliveries are never released early)."""
    if consumer_timeout_s <= 0:
        return None
    renew_s = min(MAX_RENEW_EVERY_S, consumer_timeout_s / 10)
    return LeaseTiming(
        release_after_s=consumer_timeout_s / 2, renew_every_s=renew_s, check_every_s=check_every_s(renew_s)
    )


class Verdict(Enum):
    DROP = "drop"  # the guarded attempt is over: its end sent the job on
    UNKNOWN = "unknown"  # no record, or no such attempt in it: not a copy this code published (dead-letter it)
    RENEW = "renew"  # it renewed its lease since the copy was published: look again one period later
    LOST = "lost"  # it did not: its node is gone, the job runs again


@dataclass(frozen=True)
class Look:
    """What a lease copy found: the verdict, the attempt's renewal count, the wait before the next look (the
    releasing node's own renewal interval sets it: nodes with other timeouts may check each other), and a
    reason for the log."""

    verdict: Verdict
    renewals: int
    check_every_s: float
    reason: str


def verdict(record: dict[str, Any] | None, attempt_id: str, seen: int) -> Look:
    """What a lease copy of attempt ``attempt_id``, published when its count was ``seen``, finds."""

    def drop(reason: str) -> Look:
        return Look(Verdict.DROP, seen, 0.0, reason)

    if record is None:
        return Look(Verdict.UNKNOWN, seen, 0.0, "the job has no record")
    status = status_of(record)
    if status in FINAL_STATUSES:
        return drop(f"the job is {status.value}")
    entry = next((a for a in record.get("attempts", []) if a.get("attempt_id") == attempt_id), None)
    if entry is None:
        return Look(Verdict.UNKNOWN, seen, 0.0, f"no attempt {attempt_id} in the job's record")
    if entry.get("outcome") is not None:
        return drop(f"attempt {entry.get('number')} ended {entry['outcome']}")
    if newest_attempt_id(record) != attempt_id:
        return drop(f"attempt {entry.get('number')} was superseded")
    renewals, renew_s = entry.get("renewals"), entry.get("lease_renew_s")
    if not _count(renewals) or not _seconds(renew_s):
        renewals, renew_s = seen, MAX_RENEW_EVERY_S  # not a lease this code wrote: treat it as silent
    check_s = check_every_s(renew_s)
    if renewals != seen:
        return Look(Verdict.RENEW, renewals, check_s, f"attempt {entry.get('number')} renewed its lease")
    return Look(Verdict.LOST, renewals, check_s, f"attempt {entry.get('number')} stopped renewing its lease")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= MAX_RENEW_EVERY_S
