"""Carrying out a decision about a job's message: publish it again, dead-letter it, or report it as failed.

Thin adapters over the broker. Each publishes a copy with the same message id and body and the decision's
job options (counters updated), so the counters travel with the job. Shared by the node and, later, the
cloud router.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dramatiq
from dramatiq import Message

from ..contract.job_options import OPTION_KEY, JobOptions
from ..contract.queues import FAILED_JOBS_ACTOR, FAILED_JOBS_QUEUE
from .policy import Action, Decision

#: Dramatiq bookkeeping that must not travel with a copy (``eta`` would make a worker hold it in memory).
_DROPPED_OPTIONS = ("retries", "traceback", "eta", "redis_message_id")


def next_message(message: Message, options: JobOptions | None) -> Message:
    """A copy of ``message`` carrying ``options`` (if given); Dramatiq's own retry bookkeeping is dropped."""
    original = getattr(message, "_message", message)  # unwrap a delivered message
    kept = {k: v for k, v in original.options.items() if k not in _DROPPED_OPTIONS}
    if options is not None:
        kept[OPTION_KEY] = options.to_options()
    return dataclasses.replace(original, options=kept)


def route(
    broker: dramatiq.Broker,
    message: Message,
    decision: Decision,
    *,
    node_id: str,
    error: str | None = None,
    attempts: list[dict[str, Any]] | None = None,
) -> None:
    """Send the job where ``decision`` says (``RETRY``, ``HAND_BACK``, ``DEAD_LETTER``, ``GIVE_UP``, ``REROUTE``).

    The other actions publish nothing (the message is simply acked).
    """
    if decision.action not in (Action.RETRY, Action.HAND_BACK, Action.DEAD_LETTER, Action.GIVE_UP, Action.REROUTE):
        return
    copy = next_message(message, decision.job)
    if decision.action is Action.RETRY:
        broker.enqueue(copy, delay=max(1, int(decision.delay_s * 1000)))
    elif decision.action is Action.HAND_BACK:
        broker.enqueue(copy, delay=int(decision.delay_s * 1000) or None)
    elif decision.action is Action.DEAD_LETTER:
        assert decision.dead_letter_reason is not None
        broker.dead_letter(
            message.queue_name, copy.encode(), reason=decision.dead_letter_reason.value, detail=decision.reason
        )
    elif decision.action is Action.GIVE_UP:
        report_failed(broker, copy, reason=decision.reason, error=error, node_id=node_id, attempts=attempts or [])
    elif decision.action is Action.REROUTE:
        report_failed(broker, copy, reason=decision.reason, error=None, node_id=node_id, attempts=[], kind="avoided")


def report_failed(
    broker: dramatiq.Broker,
    message: Message,
    *,
    reason: str,
    error: str | None,
    node_id: str,
    attempts: list[dict[str, Any]],
    kind: str = "failed",
) -> Message:
    """Publish the job, with its history, to ``failed-jobs`` for the router (not consumed by this node).

    ``kind`` is ``failed`` (its failure budget here is spent) or ``avoided`` (this node is in its
    ``avoid_nodes``: the router places it elsewhere).
    """
    report = Message(
        queue_name=FAILED_JOBS_QUEUE,
        actor_name=FAILED_JOBS_ACTOR,
        args=(),
        kwargs={
            "kind": kind,
            "job": message.asdict(),
            "reason": reason,
            "error": error,
            "node": node_id,
            "attempts": attempts,
        },
        # No job options: the report is a job of the router's, not another attempt of this job.
        options={},
    )
    return broker.send_elsewhere(report)
