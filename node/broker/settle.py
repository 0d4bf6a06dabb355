"""Acks and rejects sent in batches by the consumer thread: one wake-up and, where safe, one frame for many.

Dramatiq's consumer hands every ack to the connection's thread with its own ``add_callback_threadsafe`` (a
pipe write and a wake-up each) and sends one ``basic.ack`` per message; on a quorum queue each is a separate
settle command through the queue's Raft log. With several jobs in flight (the short-job settings) most acks
arrive while the consumer thread is busy, so they can go together: the worker threads queue them here and
schedule one callback, which sends what has queued up — as a single ``basic.ack`` with ``multiple`` when
every unsettled delivery up to the highest tag is among them, else one by one, in tag order. RabbitMQ then
does the work of one settle for the batch (``bench/job_cost.py``: ~45 % less broker CPU per no-op job).

``multiple`` acks every outstanding delivery up to its tag, so it is used only when no other delivery at or
below it is unsettled: every delivery a consumer took is in ``known_tags`` until Dramatiq settles it, or is
the one the consumer thread is settling itself (``_handling``: a malformed message being dead-lettered, a
message handed back during a drain); deliveries still buffered in pika have higher tags than any taken.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pika.exceptions
from dramatiq.errors import ConnectionClosed


class BatchedSettles:
    """Mixin for a Dramatiq RabbitMQ consumer (``known_tags``, ``connection``, ``channel``): batched settles."""

    known_tags: set[int]
    connection: Any
    channel: Any

    def _init_settles(self) -> None:
        self._settles: list[tuple[int, bool]] = []  # (delivery tag, ack?) queued by worker threads
        self._settles_lock = threading.Lock()
        self._settles_scheduled = False
        self._handling: int | None = None  # a delivery the consumer thread is settling itself

    def _queue_settle(self, tag: int, *, ack: bool) -> None:
        """From any thread: ack (or reject, without requeue) delivery ``tag`` soon, in the consumer thread."""
        with self._settles_lock:
            self._settles.append((tag, ack))
            if self._settles_scheduled:
                return
            self._settles_scheduled = True
        try:
            self.connection.add_callback_threadsafe(self._send_settles)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            with self._settles_lock:
                self._settles_scheduled = False
            raise ConnectionClosed(e) from None

    def _send_settles(self) -> None:
        """In the consumer thread: send every queued settle (see the module docstring)."""
        with self._settles_lock:
            settles, self._settles = sorted(self._settles), []
            self._settles_scheduled = False
        if not settles:
            return
        floor = min(self.known_tags, default=math.inf)  # the lowest delivery still unsettled elsewhere
        if self._handling is not None:
            floor = min(floor, self._handling)
        covered = 0  # the leading acks below ``floor`` go as one multiple ack
        while covered < len(settles) and settles[covered][1] and settles[covered][0] < floor:
            covered += 1
        if covered > 1:
            self.channel.basic_ack(settles[covered - 1][0], multiple=True)
            settles = settles[covered:]
        for tag, ack in settles:
            if ack:
                self.channel.basic_ack(tag)
            else:
                self.channel.basic_nack(tag, requeue=False)
