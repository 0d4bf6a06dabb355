"""A slot's one consumer over all the queues it serves, taking work in priority order, one job at a time.

Quorum queues refuse ``x-max-priority`` and per-channel (global) QoS, and every requeue spends a delivery, so
neither a priority queue nor "consume everything, put back what is not urgent" works. Instead the slot holds
no subscription at all: when it has room (fewer unacked messages than its prefetch, 1 by default) it asks the
queues in the order the topology gives (every urgent queue, then bulk, then test) with ``basic.get`` and
takes the first message found. So:

* a slot never holds more than ``prefetch`` unacked messages across all its queues (the ack of the previous
  job is sent before the next ``basic.get``, on the same channel); a job whose delivery was released early
  (``QuorumConsumer.release``) still counts until it ends. A queue may have a prefetch of its own (the
  topology's ``[consumers.<job type>]``): the slot takes a job from it only while it holds fewer jobs than
  that queue's and every held job's queue's prefetch allow (``may_take``), so a job of a prefetch-1 queue
  (GPU work) never has company, and short jobs of a prefetch-4 queue run four at a time;
* an urgent job waiting when the slot frees is the next one it runs, however many bulk jobs wait;
* the cost: an idle slot polls. It backs off from ``POLL_MIN_S`` to ``POLL_MAX_S`` while every queue is
  empty, so a job submitted to an idle network waits up to ``POLL_MAX_S`` to start, and each idle slot asks
  each of its queues about once per ``POLL_MAX_S``.

Envelope checks, ``eta`` and dead-lettering are ``QuorumConsumer``'s (this extends it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
from dramatiq.errors import ConnectionClosed

from .consumer import DeliveredMessage, QuorumConsumer

if TYPE_CHECKING:
    from .quorum import QuorumRabbitmqBroker

logger = logging.getLogger(__name__)

#: First pause after finding every queue empty.
POLL_MIN_S = 0.02
#: Longest pause between polls of an idle slot.
POLL_MAX_S = 0.5

_CHANNEL_ERRORS = (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)


def may_take(limit: int, held: Sequence[int]) -> bool:
    """Whether a slot may take a job from a queue of prefetch ``limit`` while it holds jobs from queues of
    prefetches ``held``: only while it holds fewer than each of these prefetches allows."""
    return len(held) < min((limit, *held))


class PriorityConsumer(QuorumConsumer):
    """Takes work from ``queues`` (logical names, in priority order) for one slot (see the module docstring).

    Parameters:
        broker: The node's broker.
        group: The name Dramatiq knows this consumer by (``QuorumRabbitmqBroker.SLOT_QUEUE``).
        queues: The work queues, most urgent first.
        prefetch: Most unacked messages held at once (of a queue without a prefetch of its own).
        timeout: Longest wait (milliseconds) in one call, so Dramatiq's consumer thread stays responsive.
        limits: Prefetch by queue, for the queues that have their own.
    """

    def __init__(
        self,
        broker: QuorumRabbitmqBroker,
        group: str,
        queues: list[str],
        prefetch: int,
        timeout: int,
        limits: Mapping[str, int] | None = None,
    ) -> None:
        self.broker = broker
        self.queue_name = group
        self.logical_queue_name = group
        self.queues = list(queues)
        self.limit = max(1, prefetch)
        self.limits = {queue: max(1, n) for queue, n in (limits or {}).items()}
        self._queue_of_tag: dict[int, str] = {}  # where each held delivery came from
        self._queue_of_released: dict[str, str] = {}  # message id → queue, for released jobs
        self.timeout_s = timeout / 1000
        self.logger = logger
        self._cancel_requested = False
        self._cancelled = False
        self._pause_s = POLL_MIN_S
        self.known_tags: set[int] = set()
        self._paused = False
        self._releasing: list = []
        self._lock = threading.Lock()
        self._init_settles(spare=self.limit - getattr(broker, "worker_threads", 1))
        for queue in self.queues:
            broker.consumers_by_queue[queue] = self
        try:
            self.connection = pika.BlockingConnection(parameters=broker.parameters)
            self.channel = self.connection.channel()
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None

    def __next__(self) -> DeliveredMessage | None:
        try:
            # Send the acks Dramatiq queued since the last call first: they free the slot.
            self.connection.process_data_events(time_limit=0)
            self._send_early_acks()
            if self._cancel_requested:
                self._cancelled = True  # checked between polls: no basic.get is in flight
            held = self._held()
            takes = [queue for queue in self.queues if may_take(self.limit_of(queue), held)]
            if not self.broker.intake.may_take():  # its storage fails (``node.broker.intake``)
                takes = []
            if self._cancel_requested or not takes:
                self.connection.process_data_events(time_limit=self.timeout_s)  # woken early by an ack
                return None
            for queue in takes:
                method, properties, body = self.channel.basic_get(self.broker.physical(queue), auto_ack=False)
                if method is not None:
                    self._pause_s = POLL_MIN_S
                    self._queue_of_tag[method.delivery_tag] = queue
                    return self._admit_or_dead_letter(queue, method, properties, body)
            pause, self._pause_s = self._pause_s, min(POLL_MAX_S, self._pause_s * 2)
            self.connection.process_data_events(time_limit=min(pause, self.timeout_s))
        except _CHANNEL_ERRORS as e:
            if getattr(e, "reply_code", None) == 404:
                logger.error("A queue of this node is missing (%s); it is declared again on reconnect.", e)
                self.broker.queues_pending.update(self.queues)
            raise ConnectionClosed(e) from None
        return None

    def limit_of(self, queue: str | None) -> int:
        return self.limits.get(queue, self.limit) if queue is not None else self.limit

    def _held(self) -> list[int]:
        """The prefetch of the queue of each job this slot holds; a released job (acked early, still
        running) keeps its place: the slot is busy with it."""
        with self._lock:
            tags, released = list(self.known_tags), set(self._released_ids())
            for tag in [t for t in self._queue_of_tag if t not in tags]:
                del self._queue_of_tag[tag]
            for message_id in [m for m in self._queue_of_released if m not in released]:
                del self._queue_of_released[message_id]
            return [self.limit_of(self._queue_of_tag.get(t)) for t in tags] + [
                self.limit_of(self._queue_of_released.get(m)) for m in released
            ]

    def release(self, message: Any) -> threading.Event:
        with self._lock:
            self._queue_of_released[message.message_id] = message.queue_name
        return super().release(message)

    def request_cancel(self) -> None:
        """Take no more work (nothing is subscribed, so nothing arrives that would have to be handed back)."""
        self._cancel_requested = True
