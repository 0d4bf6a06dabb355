"""A slot's one consumer over all the queues it serves, taking work in priority order, one job at a time.

Quorum queues refuse ``x-max-priority`` and per-channel (global) QoS, and every requeue spends a delivery, so
neither a priority queue nor "consume everything, put back what is not urgent" works. Instead the slot holds
no subscription at all: when it has room (fewer unacked messages than its prefetch, 1 by default) it asks the
queues in the order the topology gives (every urgent queue, then bulk, then test) with ``basic.get`` and
takes the first message found. So:

* a slot never holds more than ``prefetch`` unacked messages across all its queues (the ack of the previous
  job is sent before the next ``basic.get``, on the same channel); a job whose delivery was released early
  (``QuorumConsumer.release``) still counts until it ends;
* an urgent job waiting when the slot frees is the next one it runs, however many bulk jobs wait;
* the cost: an idle slot polls. It backs off from ``POLL_MIN_S`` to ``POLL_MAX_S`` while every queue is
  empty, so a job submitted to an idle network waits up to ``POLL_MAX_S`` to start, and each idle slot asks
  each of its queues about once per ``POLL_MAX_S``.

Envelope checks, ``eta`` and dead-lettering are ``QuorumConsumer``'s (this extends it).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

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


class PriorityConsumer(QuorumConsumer):
    """Takes work from ``queues`` (logical names, in priority order) for one slot (see the module docstring).

    Parameters:
        broker: The node's broker.
        group: The name Dramatiq knows this consumer by (``QuorumRabbitmqBroker.SLOT_QUEUE``).
        queues: The work queues, most urgent first.
        prefetch: Most unacked messages held at once.
        timeout: Longest wait (milliseconds) in one call, so Dramatiq's consumer thread stays responsive.
    """

    def __init__(
        self, broker: QuorumRabbitmqBroker, group: str, queues: list[str], prefetch: int, timeout: int
    ) -> None:
        self.broker = broker
        self.queue_name = group
        self.logical_queue_name = group
        self.queues = list(queues)
        self.limit = max(1, prefetch)
        self.timeout_s = timeout / 1000
        self.logger = logger
        self._cancel_requested = False
        self._cancelled = False
        self._pause_s = POLL_MIN_S
        self.known_tags: set[int] = set()
        self._paused = False
        self._releasing: list = []
        self._lock = threading.Lock()
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
            with self._lock:
                # A released job (acked early, still running) keeps its place: the slot is busy with it.
                held = len(self.known_tags) + len(self._released_ids())
            if self._cancel_requested or held >= self.limit:
                self.connection.process_data_events(time_limit=self.timeout_s)  # woken early by an ack
                return None
            for queue in self.queues:
                method, properties, body = self.channel.basic_get(self.broker.physical(queue), auto_ack=False)
                if method is not None:
                    self._pause_s = POLL_MIN_S
                    return self._admit_or_dead_letter(queue, method, properties, body)
            pause, self._pause_s = self._pause_s, min(POLL_MAX_S, self._pause_s * 2)
            self.connection.process_data_events(time_limit=min(pause, self.timeout_s))
        except _CHANNEL_ERRORS as e:
            if getattr(e, "reply_code", None) == 404:
                logger.error("A queue of this node is missing (%s); it is declared again on reconnect.", e)
                self.broker.queues_pending.update(self.queues)
            raise ConnectionClosed(e) from None
        return None

    def request_cancel(self) -> None:
        """Take no more work (nothing is subscribed, so nothing arrives that would have to be handed back)."""
        self._cancel_requested = True
