"""The quorum-queue consumer: what a node trusts of a delivery, and how it stops taking work.

Extends Dramatiq's private ``_RabbitmqConsumer`` (Dramatiq is pinned exactly for this):

* every delivery's envelope is decoded and checked (``node.contract.envelope``) *before* Dramatiq sees it; a
  message that fails — not JSON, a field of the wrong type, a ``queue_name`` other than the queue it came
  from, an unknown actor, arguments that do not fit the actor — is dead-lettered once as ``malformed`` with a
  detail naming the field, and acked. Nothing raises out of ``__next__``, so no consumer thread crash-loops;
* ``options.eta`` is honoured through the broker's wait queues instead of Dramatiq's in-memory delay queue,
  which would hold the message unacked (and, with prefetch 1, block the queue) until then;
* ``x-delivery-count`` and ``redelivered`` are exposed to middleware (``DeliveredMessage``);
* ``request_cancel()`` (thread-safe) stops the flow of deliveries during a drain; a message that arrives
  after it is handed back untouched (published again, then acked: no delivery count spent) and the
  connection keeps being serviced, so the running job's ack and heartbeats still flow;
* ``release(message)`` (thread-safe) acks a delivery whose job goes on running (a job longer than the
  broker's ``consumer_timeout``, ``node.attempt.lease``): the consumer stops taking deliveries first, so
  the freed prefetch window brings no second job to a busy worker, and takes them again once every
  released job of this worker on this queue has ended. Dramatiq's own ack of a released message, at the
  job's end, is skipped;
* while the worker's storage fails (``node.broker.intake``) it stops taking deliveries the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound, ConnectionClosed
from dramatiq.message import Message

from ..contract.envelope import check_arguments, check_fields, decode_fields
from ..contract.job_options import JobOptions
from ..contract.queues import DeadLetterReason
from ..contract.signing import verify
from ..errors import MalformedMessage
from .settle import BatchedSettles

if TYPE_CHECKING:
    from .quorum import QuorumRabbitmqBroker

logger = logging.getLogger(__name__)

#: An ``eta`` closer than this is simply run now.
ETA_SLACK_MS = 50


class DeliveredMessage(_RabbitmqMessage):
    """A delivered message plus what RabbitMQ said about the delivery.

    Attributes:
        redelivered: The broker delivered it before (to this or another consumer).
        delivery_count: Earlier deliveries that did not end in an ack (0 on the first delivery).
        headers: The AMQP headers as received.
        checked_job: The job options as the consumer checked them (the lifecycle need not parse them again).
    """

    def __init__(
        self, redelivered: bool, tag: int, message: Message, delivery_count: int, headers: dict, checked_job: JobOptions
    ):
        super().__init__(redelivered, tag, message)
        # The message's fields as attributes of the proxy: each read would otherwise fail a normal lookup and
        # go through ``MessageProxy.__getattr__`` (a job's middleware reads them ~25 times). ``Message`` is
        # frozen, so the copies cannot go stale.
        self.queue_name = message.queue_name
        self.actor_name = message.actor_name
        self.args = message.args
        self.kwargs = message.kwargs
        self.options = message.options
        self.message_id = message.message_id
        self.message_timestamp = message.message_timestamp
        self.delivery_count = delivery_count
        self.headers = headers
        self.checked_job = checked_job


class QuorumConsumer(BatchedSettles, _RabbitmqConsumer):
    """Consumes one quorum work queue for a Dramatiq worker (see the module docstring)."""

    def __init__(self, broker: QuorumRabbitmqBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.logical_queue_name = q_name(queue_name)
        self.timeout_s = timeout / 1000
        self._cancel_requested = False
        self._cancelled = False
        self._paused = False  # not consuming while a released job of this worker runs
        self._releasing: list[tuple[int, threading.Event]] = []  # (delivery tag, done) for the consumer thread
        self._lock = threading.Lock()
        self._init_settles(spare=prefetch - getattr(broker, "worker_threads", 1))
        super().__init__(broker, broker.physical(queue_name), prefetch, timeout)
        broker.consumers_by_queue[self.logical_queue_name] = self

    def request_cancel(self) -> None:
        """Stop taking deliveries (acted on in the consumer thread within one consumer timeout)."""
        self._cancel_requested = True
        self._settle_hold_s = 0.0  # a draining worker's acks go out at once

    @property
    def stopped(self) -> bool:
        """True once a requested cancel has taken effect: no delivery will reach this worker any more."""
        return self._cancelled

    def release(self, message: Message) -> threading.Event:
        """Ack ``message``'s delivery now although its job runs on (see the module docstring); the returned
        event is set once the ack is sent (by the consumer thread, within one consumer timeout)."""
        done = threading.Event()
        with self._lock:
            self._released_ids().add(message.message_id)
            self._releasing.append((message._tag, done))
        return done

    def ack(self, message) -> None:
        if not self._end_of_released(message) and self._forget_tag(message):
            self._queue_settle(message._tag, ack=True)

    def nack(self, message) -> None:
        if self._end_of_released(message):
            logger.error(
                "Message %s was acked early (its job outlived the consumer timeout) and cannot be rejected now; "
                "its lease copy remains.",
                message.message_id,
            )
            return
        if self._forget_tag(message):
            self._queue_settle(message._tag, ack=False)

    def _forget_tag(self, message) -> bool:
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            logger.warning("Message %s was settled already (its delivery is not held).", message.message_id)
            return False
        return True

    def _released_ids(self) -> set[str]:
        # On the broker, not on this object: a consumer that reconnects while a released job runs must not
        # take a second job either (the worker's thread is still busy).
        return self.broker.released.setdefault(self.logical_queue_name, set())

    def _end_of_released(self, message) -> bool:
        """The job of a released message ended: forget it (True), or it was never released (False)."""
        with self._lock:
            released = self._released_ids()
            if message.message_id not in released:
                return False
            released.discard(message.message_id)
            for item in self._releasing:
                if item[0] == message._tag:  # ended before its early ack was sent: ack it as usual
                    self._releasing.remove(item)
                    item[1].set()
                    return False
            return True

    def _service_releases(self, taking: bool = True) -> bool:
        """Send the early acks asked for; True while a released job of this worker runs, or (``taking``
        false) its storage fails: take nothing."""
        with self._lock:
            # A paused consumer resumes only once it holds no delivery: a new subscription gets a prefetch
            # window of its own, which would bring more jobs than the prefetch beside those still held.
            busy = bool(self._released_ids()) or not taking or (self._paused and bool(self.known_tags))
        try:
            if busy and not self._paused:
                self._paused = True
                self._stop_consuming()  # before the ack: a freed prefetch window would bring the next job
            self._send_early_acks()
            if not busy and self._paused:
                self._paused = False
                self.iterator = self.channel.consume(self.queue_name, inactivity_timeout=self.timeout_s)
                logger.info("Taking jobs from %r again.", self.queue_name)
                return False
            if busy:
                self.connection.process_data_events(time_limit=self.timeout_s)
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None
        return busy

    def _send_early_acks(self) -> None:
        with self._lock:
            releasing, self._releasing = self._releasing, []
        for tag, done in releasing:
            self.known_tags.discard(tag)
            self.channel.basic_ack(tag)
            done.set()

    def __next__(self):
        if self._cancel_requested:
            return self._idle_after_cancel()
        taking = self.broker.intake.may_take()
        if (not taking or self._releasing or self._paused or self.broker.released.get(self.logical_queue_name)) and (
            self._service_releases(taking)
        ):
            return None
        try:
            method, properties, body = next(self.iterator)
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            if getattr(e, "reply_code", None) == 404:
                self.broker.queues_pending.add(self.logical_queue_name)
            raise ConnectionClosed(e) from None
        if method is None:
            return None
        if self._cancel_requested:  # arrived while shutdown began: not ours to run
            self._hand_back_untouched(method.delivery_tag, body)
            return self._idle_after_cancel()
        if not self.broker.intake.may_take():  # storage failed while it was on its way: not one to try now
            self._hand_back_untouched(method.delivery_tag, body)
            return None
        return self._admit_or_dead_letter(self.logical_queue_name, method, properties, body)

    def _admit_or_dead_letter(self, queue: str, method: Any, properties: Any, body: bytes) -> DeliveredMessage | None:
        self._handling = method.delivery_tag  # unsettled, and not yet in known_tags (``node.broker.settle``)
        try:
            return self._admit(queue, method, properties, body)
        except ConnectionClosed:
            raise
        except MalformedMessage as e:
            self._dead_letter(queue, method.delivery_tag, body, str(e), reason=e.reason)
        except Exception as e:  # whatever else a hostile body provokes: it must not crash this thread
            self._dead_letter(queue, method.delivery_tag, body, f"unreadable message: {type(e).__name__}: {e}")
        finally:
            self._handling = None
        return None

    def _admit(self, queue: str, method: Any, properties: Any, body: bytes) -> DeliveredMessage | None:
        fields = decode_fields(body)
        job = check_fields(fields, delivered_on=queue)
        try:
            actor = self.broker.get_actor(fields["actor_name"])
        except ActorNotFound:
            raise MalformedMessage("actor_name", f"no actor {fields['actor_name']!r} on this node") from None
        check_arguments(actor.fn, fields["args"], fields["kwargs"])
        if self.broker.trusted_keys:  # this node runs signed jobs only
            verify(self.broker.trusted_keys, fields["actor_name"], fields["args"], fields["kwargs"], job.to_options())
        message = Message(**{**fields, "args": tuple(fields["args"])})
        eta = message.options.get("eta")
        if eta is not None:
            message = message.copy(options={k: v for k, v in message.options.items() if k != "eta"})
            delay_ms = int(eta - time.time() * 1000)
            if delay_ms > ETA_SLACK_MS:
                logger.info(
                    "Message %s asks to run in %.1fs: waiting in the broker.", message.message_id, delay_ms / 1000
                )
                self.broker.enqueue(message, delay=delay_ms)
                self._ack_now(method.delivery_tag)
                return None
        headers = dict(properties.headers or {})
        self.known_tags.add(method.delivery_tag)
        self.broker.intake.took()
        count = headers.get("x-delivery-count") or 0
        return DeliveredMessage(
            method.redelivered,
            method.delivery_tag,
            message,
            delivery_count=count if isinstance(count, int) else 0,
            headers=headers,
            checked_job=job,
        )

    def _settle(self, tag: int, *, ack: bool, requeue: bool = False) -> None:
        try:
            if ack:
                self.channel.basic_ack(tag)
            else:
                self.channel.basic_nack(tag, requeue=requeue)
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None

    def _ack_now(self, tag: int) -> None:
        self._settle(tag, ack=True)

    def _dead_letter(
        self, queue: str, tag: int, body: bytes, detail: str, *, reason: str = DeadLetterReason.MALFORMED
    ) -> None:
        logger.error("Dead-lettering a message on %r (%s): %s", queue, reason, detail)
        try:
            self.broker.dead_letter(queue, body, reason=reason, detail=detail)
        except Exception:
            # Could not publish with a reason: let the broker dead-letter it ("rejected") rather than lose it.
            logger.warning("Falling back to a plain reject for the malformed message.", exc_info=True)
            self._settle(tag, ack=False, requeue=False)
            return
        self._settle(tag, ack=True)

    def _hand_back_untouched(self, tag: int, body: bytes) -> None:
        self._handling = tag
        try:
            self.broker.publish_raw(self.logical_queue_name, body)
        except Exception:
            logger.warning("Could not hand back a message taken during shutdown; requeueing it.", exc_info=True)
            self._settle(tag, ack=False, requeue=True)
            return
        else:
            self._settle(tag, ack=True)
        finally:
            self._handling = None

    def _idle_after_cancel(self):
        try:
            if not self._cancelled:
                self._cancelled = True
                if not self._paused:
                    self._stop_consuming()
                logger.info("Stopped taking new jobs from %r.", self.queue_name)
            self._send_early_acks()  # a long job's early ack still goes out during a drain
            self.connection.process_data_events(time_limit=self.timeout_s)
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None
        return None

    def _stop_consuming(self) -> None:
        # Deliveries already buffered in pika would be rejected with requeue by cancel() (spending a delivery
        # each): hand them back untouched first.
        for _ in range(self.channel.get_waiting_message_count()):
            method, _properties, body = next(self.iterator)
            if method is not None:
                self._hand_back_untouched(method.delivery_tag, body)
        self.channel.cancel()
