"""``burrow dlq list | show ID | requeue ID… | purge``: the work queues' dead-letter queues (``Q.XQ``).

A running router empties these into its quarantine; this is for looking before it does, or without one.

Listing without losing or reordering: a quorum queue has no peek, so the listing takes every dead letter
with ``basic.get`` (no ack) on one channel and then closes it, which returns them all. Verified on RabbitMQ
3.10: returned messages come back in their order, ahead of anything newer. Each look raises their
``x-delivery-count``, which a dead-letter queue (declared without a delivery limit) does not act on. Requeue
and purge work the same way on a transactional channel: the chosen ones are acked — for a requeue in the same
commit as the request to the router — and the rest go back.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from dataclasses import dataclass
from typing import Any

import pika
from dramatiq import Message
from dramatiq.common import xq_name

from node.contract.queues import DETAIL_HEADER, FAILED_JOBS_ACTOR, FAILED_JOBS_QUEUE, death_reason, deaths

from .routing.quarantine import entry_id, job_of

#: The most dead letters one command holds at once (the rest stay where they are, in order).
MAX_HELD = 10_000


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    tag: int
    id: str
    job_id: str | None
    actor: str | None
    reason: str
    detail: str
    dead_at: float | None
    failures: int | None
    message: dict[str, Any] | None
    body: bytes


def read(channel, broker, queue: str, limit: int = MAX_HELD) -> list[DeadLetter]:
    """Take (without acking) up to ``limit`` dead letters of ``queue`` (which must exist: a missing one closes
    the channel); closing ``channel`` returns them."""
    letters = []
    while len(letters) < limit:
        method, properties, body = channel.basic_get(broker.physical(xq_name(queue)), auto_ack=False)
        if method is None:
            break
        letters.append(_parse(queue, method.delivery_tag, properties, body))
    return letters


def _parse(queue: str, tag: int, properties: pika.BasicProperties, body: bytes) -> DeadLetter:
    headers = properties.headers or {}
    try:
        message = json.loads(body)
        message = message if isinstance(message, dict) else None
    except (ValueError, RecursionError):  # what a node dead-letters as malformed may be anything
        message = None
    job, job_id = job_of(message)
    dead_at = properties.timestamp
    for death in deaths(headers):
        if dead_at is None and isinstance(death.get("time"), datetime.datetime):
            dead_at = death["time"].timestamp()
    detail = headers.get(DETAIL_HEADER) or ""
    failures = job.get("failures")
    return DeadLetter(
        queue=queue,
        tag=tag,
        id=entry_id(job_id, properties.message_id, body),
        job_id=job_id,
        actor=(message or {}).get("actor_name") if isinstance((message or {}).get("actor_name"), str) else None,
        reason=death_reason(headers) or "unknown",
        detail=detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail),
        dead_at=float(dead_at) if isinstance(dead_at, int | float) else None,
        failures=failures if isinstance(failures, int) else None,
        message=message if job_id and message and "actor_name" in message else None,
        body=body,
    )


def requeue_request(letter: DeadLetter, to: str | None) -> bytes:
    """The ``failed-jobs`` message asking the router to put ``letter``'s job back (counters reset)."""
    request = Message(
        queue_name=FAILED_JOBS_QUEUE,
        actor_name=FAILED_JOBS_ACTOR,
        args=(),
        kwargs={"kind": "requeue", "job": letter.message, "to": to},
        options={},
    )
    return request.encode()


def age(letter: DeadLetter, now: float | None = None) -> float | None:
    return None if letter.dead_at is None else max(0.0, (now or time.time()) - letter.dead_at)


def shown_body(letter: DeadLetter) -> str:
    try:
        return letter.body.decode("utf-8")
    except UnicodeDecodeError:
        return "(base64) " + base64.b64encode(letter.body).decode()
