"""Where a job's message goes next: retried, handed back, dead-lettered or reported as failed.

Thin adapters over the broker, shared by the node's lifecycle middleware (and, later, the cloud router).
Each publishes a copy with the same message id and body and the job's updated options.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dramatiq
from dramatiq import Message

from .job_options import OPTION_KEY, JobOptions

#: The durable queue of jobs whose failure budget is spent, consumed by the cloud-side router actor.
FAILED_JOBS_QUEUE = "failed-jobs"
FAILED_JOBS_ACTOR = "route_failed_job"


def next_message(message: Message, options: JobOptions | None) -> Message:
    """A copy of ``message`` carrying ``options`` (if given); Dramatiq's own retry bookkeeping is dropped."""
    original = getattr(message, "_message", message)  # unwrap a delivered message
    kept = {k: v for k, v in original.options.items() if k not in ("retries", "traceback", "eta")}
    if options is not None:
        kept[OPTION_KEY] = options.to_options()
    return dataclasses.replace(original, options=kept)


def retry_later(broker: dramatiq.Broker, message: Message, options: JobOptions | None, delay_s: float) -> None:
    """Publish the job again after ``delay_s`` (through the broker's wait queues)."""
    broker.enqueue(next_message(message, options), delay=max(1, int(delay_s * 1000)))


def hand_back(broker: dramatiq.Broker, message: Message, options: JobOptions, node_id: str) -> None:
    """Publish the job again at once for another node, noting this node in ``avoid_nodes``."""
    avoid = tuple(dict.fromkeys((*options.avoid_nodes, node_id)))
    broker.enqueue(next_message(message, options.replace(avoid_nodes=avoid)))


def dead_letter(
    broker: dramatiq.Broker, message: Message, options: JobOptions | None, *, reason: str, detail: str
) -> None:
    """Put the job into its queue's dead-letter queue with ``reason`` (``expired``, ``malformed``)."""
    broker.dead_letter(message.queue_name, next_message(message, options).encode(), reason=reason, detail=detail)


def report_failed(
    broker: dramatiq.Broker,
    message: Message,
    options: JobOptions,
    *,
    reason: str,
    error: str | None,
    node_id: str,
    attempts: list[dict[str, Any]],
) -> Message:
    """Publish the job, with its history, to ``failed-jobs`` for the router (not consumed by this node)."""
    report = Message(
        queue_name=FAILED_JOBS_QUEUE,
        actor_name=FAILED_JOBS_ACTOR,
        args=(),
        kwargs={
            "job": next_message(message, options).asdict(),
            "reason": reason,
            "error": error,
            "node": node_id,
            "attempts": attempts,
        },
        # No job options: the report is a job of the router's, not another attempt of this job.
        options={},
    )
    return broker.send_elsewhere(report)
