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

Held acks: when the prefetch exceeds the worker's threads (the short-job settings, e.g. prefetch 16 × 2
threads), jobs end one at a time and the consumer thread, idle, would send each ack alone — five times the
settle commands RabbitMQ runs when it keeps up (``bench/job_cost.py``: the broker's CPU per job 2.5×). So the
first ack of a batch waits ``SETTLE_HOLD_S`` for others, or until ``spare`` acks have queued (the deliveries
the threads are not running: while that many are held, the broker still has work buffered for every
thread). A job's ack is never held at prefetch ≤ threads (prefetch 1: the broker sends the next job only
after it), nor once a drain began; closing the consumer sends what is held.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pika.exceptions
from dramatiq.errors import ConnectionClosed

#: How long the first of a batch of acks waits for others (see the module docstring): a few jobs' time.
SETTLE_HOLD_S = 0.002
#: Longest an ack waits behind a job that still runs before it is sent alone.
SETTLE_HOLD_MAX_S = 0.02


class BatchedSettles:
    """Mixin for a Dramatiq RabbitMQ consumer (``known_tags``, ``connection``, ``channel``): batched settles."""

    known_tags: set[int]
    connection: Any
    channel: Any

    def _init_settles(self, *, spare: int = 0) -> None:
        """``spare``: prefetch minus the worker's threads (acks are held only when it is positive)."""
        self._settles: list[tuple[int, bool, float]] = []  # (delivery tag, ack?, when) queued by worker threads
        self._settles_lock = threading.Lock()
        self._settles_scheduled = False  # a send (now, or after the hold) is on its way
        self._settles_hurried = False  # ... and one that does not wait for the hold
        self._settle_spare = max(1, spare)
        self._settle_hold_s = SETTLE_HOLD_S if spare > 0 else 0.0
        self._handling: int | None = None  # a delivery the consumer thread is settling itself

    def _queue_settle(self, tag: int, *, ack: bool) -> None:
        """From any thread: ack (or reject, without requeue) delivery ``tag`` soon, in the consumer thread."""
        with self._settles_lock:
            self._settles.append((tag, ack, time.monotonic()))
            hurry = not self._settle_hold_s or len(self._settles) >= self._settle_spare
            if self._settles_hurried or (self._settles_scheduled and not hurry):
                return
            self._settles_scheduled = True
            self._settles_hurried = hurry
        try:
            self.connection.add_callback_threadsafe(self._send_settles if hurry else self._hold_settles)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            with self._settles_lock:
                self._settles_scheduled = self._settles_hurried = False
            raise ConnectionClosed(e) from None

    def _hold_settles(self) -> None:
        """In the consumer thread: send the queued settles after the hold (others may join them)."""
        self.connection.call_later(self._settle_hold_s, self._send_settles)

    def close(self) -> None:
        self._settle_hold_s = 0.0
        with self._settles_lock:
            held = bool(self._settles)
        if held:  # run before the consumer's final callback, which closing waits for
            try:
                self.connection.add_callback_threadsafe(self._send_settles)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
                pass  # the connection is gone: the broker redelivers what was not acked
        super().close()  # type: ignore[misc]

    def _send_settles(self) -> None:
        """In the consumer thread: send the queued settles (see the module docstring)."""
        with self._settles_lock:
            settles, self._settles = sorted(self._settles), []
            hurried = self._settles_hurried or not self._settle_hold_s
            self._settles_scheduled = self._settles_hurried = False
        if not settles:
            return
        floor = min(self.known_tags, default=math.inf)  # the lowest delivery still unsettled elsewhere
        if self._handling is not None:
            floor = min(floor, self._handling)
        covered = 0  # the leading acks below ``floor`` go as one multiple ack
        while covered < len(settles) and settles[covered][1] and settles[covered][0] < floor:
            covered += 1
        if covered:
            self.channel.basic_ack(settles[covered - 1][0], multiple=covered > 1)
            settles = settles[covered:]
        if (
            settles
            and not hurried
            and len(settles) < self._settle_spare
            and time.monotonic() - min(queued for _, _, queued in settles) < SETTLE_HOLD_MAX_S
        ):
            # Above a delivery that still runs: held on, to go with it as one multiple ack once it ends.
            with self._settles_lock:
                self._settles[:0] = settles
                if self._settles_scheduled:
                    return
                self._settles_scheduled = True
            self.connection.call_later(self._settle_hold_s, self._send_settles)
            return
        for tag, ack, _ in settles:
            if ack:
                self.channel.basic_ack(tag)
            else:
                self.channel.basic_nack(tag, requeue=False)
