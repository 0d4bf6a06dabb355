"""A Dramatiq RabbitMQ broker that declares quorum queues.

Upstream Dramatiq declares classic queues and keeps delayed messages unacked in worker memory.  For
interruptible GPU nodes we need instead:

* work queues that are *quorum* queues with a dead-letter exchange and a delivery limit, so a message that
  kills its process every time ends in a dead-letter queue instead of looping forever;
* dead letters in a durable quorum queue (``Q.XQ``) with the reason kept (``x-death`` from the broker, or an
  ``x-burrow-reason`` header when Burrow dead-letters a message itself);
* delays handled by the broker (fixed-TTL wait queues that dead-letter back to the target), so no worker holds
  a delayed message unacked and a crash never spends a delayed message's delivery count;
* publisher confirms, a configurable heartbeat, and the consumer of ``node.broker.consumer``.

The physical queue names may carry a prefix (``queue_prefix``) so several deployments or test runs can share
one vhost; Dramatiq and the actors only ever see the logical names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import q_name, xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from .. import metrics
from ..contract.job_options import OPTION_KEY, JobOptions
from ..contract.queues import (
    CANCEL_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DETAIL_HEADER,
    REASON_HEADER,
    WAIT_BUCKETS_MS,
    wait_bucket_ms,
    wait_queue_arguments,
    wait_queue_name,
    work_queue_arguments,
)
from ..contract.topology import Topology
from ..errors import NoSuchQueue, QueueMismatchError
from ..retrying import current_deadline
from .consumer import QuorumConsumer
from .hooks import HookDispatch
from .intake import Intake
from .priority import PriorityConsumer
from .tls import apply_ca

#: Publishing retries through a broker restart: attempts and the pause before each retry.
PUBLISH_RETRY_DELAYS_S: tuple[float, ...] = (0, 0.1, 0.25, 0.5, 1, 2, 3, 5, 5, 5, 5, 5)


class QuorumRabbitmqBroker(HookDispatch, RabbitmqBroker):
    """A ``RabbitmqBroker`` whose work queues are quorum queues.

    Parameters:
        url: AMQP URL (several separated by ``;``).
        delivery_limit: Redeliveries before a message is dead-lettered (N means up to N+1 runs).
        queue_prefix: Prepended to every physical queue and exchange name.
        heartbeat_s: AMQP heartbeat in seconds (0 disables).
        middleware: Dramatiq middleware list.
        confirm_delivery: Wait for the broker to confirm every publish (on by default: nothing is lost).
        topology: The queue topology (``node.contract.topology``): jobs are published to the queue their
            options name, which must exist (``NoSuchQueue`` otherwise). ``None``: one queue per actor.
        serves: The topology queues this worker takes work from, most urgent first; Dramatiq then sees one
            queue (``SLOT_QUEUE``) whose consumer is a ``PriorityConsumer`` over them.
        ca_file: CA certificates (PEM) that ``amqps://`` brokers must present a certificate from.
        trusted_keys: Ed25519 public keys by key id (``Settings.trusted``): the consumers then dead-letter
            unsigned or altered jobs as ``bad-signature`` (``node.contract.signing``).
    """

    #: What Dramatiq calls the one consumer of a worker that serves topology queues.
    SLOT_QUEUE = "burrow.slot"

    def __init__(
        self,
        *,
        url: str,
        delivery_limit: int = 3,
        queue_prefix: str = "",
        heartbeat_s: int = 30,
        middleware: list[Middleware] | None = None,
        confirm_delivery: bool = True,
        topology: Topology | None = None,
        serves: list[str] | None = None,
        trusted_keys: Mapping[str, Any] | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.topology = topology
        #: Public keys whose job signatures this node accepts; set, it runs signed jobs only.
        self.trusted_keys = dict(trusted_keys or {})
        self.serves = list(serves or [])  # set first: Dramatiq's constructor asks for the declared queues
        super().__init__(url=url, middleware=middleware, confirm_delivery=confirm_delivery)
        for parameters in self.parameters if isinstance(self.parameters, list) else [self.parameters]:
            parameters.heartbeat = heartbeat_s
        apply_ca(self.parameters if isinstance(self.parameters, list) else [self.parameters], ca_file)
        self.delivery_limit = delivery_limit
        self.queue_prefix = queue_prefix
        self.dead_letter_exchange = queue_prefix + DEAD_LETTER_EXCHANGE
        self._wait_buckets_declared: set[int] = set()
        self._unannounced: set[str] = set()
        #: This process's newest consumer of each queue, and the ids of messages whose delivery was acked
        #: early while their job runs (``QuorumConsumer.release``).
        self.consumers_by_queue: dict[str, QuorumConsumer] = {}
        self.released: dict[str, set[str]] = {}
        #: The worker's threads (set by ``node.middleware.Prefetch``): a consumer whose prefetch exceeds them
        #: holds acks briefly to send them together (``node.broker.settle``).
        self.worker_threads = 1
        #: Whether this worker takes jobs now: not while its storage fails (``node.broker.intake``).
        self.intake = Intake()

    # -- names -------------------------------------------------------------------------------------------

    def physical(self, queue_name: str) -> str:
        """The RabbitMQ name of a logical queue name."""
        return self.queue_prefix + queue_name

    def wait_queue_name(self, bucket_ms: int) -> str:
        return wait_queue_name(self.queue_prefix, bucket_ms)

    @property
    def consumer_class(self):
        return QuorumConsumer

    def work_queues(self) -> list[str]:
        """The work queues this worker takes jobs from."""
        return self.serves or sorted(self.get_declared_queues())

    def get_declared_queues(self) -> set[str]:
        return {self.SLOT_QUEUE} if self.serves else super().get_declared_queues()

    # -- declaring ---------------------------------------------------------------------------------------

    def declare_queue(self, queue_name: str, *, ensure: bool = False) -> None:
        """Declare a work queue (and its dead-letter queue).  Unlike upstream, no ``.DQ`` queue is announced,
        so workers start no delay consumer: delays live in the broker's wait queues.
        """
        canonical = q_name(queue_name)
        if self.serves:
            # One consumer serves this worker's topology queues (``SLOT_QUEUE``): announcing a queue would
            # make Dramatiq's worker start another consumer for it.
            self.queues.add(canonical)
        elif canonical not in self.queues:
            self.emit_before("declare_queue", canonical)
            self.queues.add(canonical)
            self.queues_pending.add(canonical)
            self.emit_after("declare_queue", canonical)
        if ensure:
            self._ensure_queue(canonical)

    def _ensure_queue(self, canonical_queue_name: str) -> None:
        for attempt, pause in enumerate(PUBLISH_RETRY_DELAYS_S[:3]):
            time.sleep(pause)
            try:
                if canonical_queue_name in self.queues_pending:
                    self._declare_xq_queue(canonical_queue_name)
                    self._declare_queue(canonical_queue_name)
                    self.queues_pending.discard(canonical_queue_name)
                return
            except pika.exceptions.ChannelClosedByBroker as e:
                del self.channel
                if e.reply_code == 406:
                    raise self._mismatch(canonical_queue_name, e) from None
                if attempt == 2:
                    raise ConnectionClosed(e) from None
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                del self.connection
                if attempt == 2:
                    raise ConnectionClosed(e) from None

    def _mismatch(self, queue_name: str, error: pika.exceptions.ChannelClosedByBroker) -> QueueMismatchError:
        return QueueMismatchError(
            f"queue {self.physical(queue_name)!r} already exists with other arguments "
            f"(a classic queue, or another delivery limit): {error.reply_text}. Queue arguments are "
            "frozen once declared: delete the queue or choose another name/prefix "
            "(BURROW_QUEUE_PREFIX); tune the delivery limit of an existing queue with a policy."
        )

    def _build_queue_arguments(self, queue_name: str) -> dict:
        return work_queue_arguments(
            dead_letter_exchange=self.dead_letter_exchange,
            dead_letter_queue=self.physical(xq_name(queue_name)),
            delivery_limit=self.delivery_limit,
        )

    def _declare_queue(self, queue_name: str):
        return self.channel.queue_declare(
            queue=self.physical(queue_name), durable=True, arguments=self._build_queue_arguments(queue_name)
        )

    def _declare_dq_queue(self, queue_name: str):  # pragma: no cover - never used, see declare_queue
        raise NotImplementedError("Burrow delays through wait queues; there is no .DQ queue")

    def _declare_xq_queue(self, queue_name: str):
        channel = self.channel
        channel.exchange_declare(self.dead_letter_exchange, exchange_type="direct", durable=True)
        xq = self.physical(xq_name(queue_name))
        result = channel.queue_declare(queue=xq, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(xq, self.dead_letter_exchange, routing_key=xq)
        return result

    def declare_wait_bucket(self, bucket_ms: int) -> str:
        """Declare the wait queue of ``bucket_ms`` (once per connection) and return the exchange that feeds it;
        reconnects as a publish does, for callers that publish to it themselves (the router's outbox)."""
        self._with_reconnect(lambda: self._declare_wait_bucket(bucket_ms), self.wait_queue_name(bucket_ms))
        return self.wait_queue_name(bucket_ms)

    def _declare_wait_bucket(self, bucket_ms: int) -> None:
        if bucket_ms in self._wait_buckets_declared:
            return
        name = self.wait_queue_name(bucket_ms)
        channel = self.channel
        channel.exchange_declare(name, exchange_type="fanout", durable=True)
        channel.queue_declare(queue=name, durable=True, arguments=wait_queue_arguments(bucket_ms))
        channel.queue_bind(name, name)
        self._wait_buckets_declared.add(bucket_ms)

    # -- publishing --------------------------------------------------------------------------------------

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Publish ``message`` (with publisher confirms), after ``delay`` milliseconds if given.

        A delayed message goes to the smallest wait queue at least ``delay`` long, whose expiry sends it back
        to its work queue; ``eta`` is not set, so no worker holds it in memory. The message expires after its
        own ``delay`` (per-message TTL) unless one ahead of it in that queue leaves later: it never waits
        longer than the bucket. A delay past the longest bucket carries ``eta``: back from that wait, the rest
        is waited out again (``node.broker.consumer``) instead of running early.
        """
        return self._publish(message, delay=delay, announce=True)

    def send_elsewhere(self, message: Message) -> Message:
        """Publish ``message`` to a queue that this process does not consume (e.g. ``failed-jobs``).

        ``enqueue`` declares the queue on the broker object, and Dramatiq's worker starts consuming every
        queue its broker declares; this declares the queue on the server only.
        """
        return self._publish(message, delay=None, announce=False)

    def _ensure_unannounced(self, queue_name: str) -> None:
        if queue_name in self.queues or queue_name in self._unannounced:
            return
        try:
            self._declare_xq_queue(queue_name)
            self._declare_queue(queue_name)
        except pika.exceptions.ChannelClosedByBroker as e:
            del self.channel
            if e.reply_code == 406:
                raise self._mismatch(queue_name, e) from None
            raise
        self._unannounced.add(queue_name)

    def _publish(self, message: Message, *, delay: int | None, announce: bool) -> Message:
        if message.options.get("eta") is not None:
            message = message.copy(options={k: v for k, v in message.options.items() if k != "eta"})
        bucket = wait_bucket_ms(delay) if delay else None
        if delay and delay > WAIT_BUCKETS_MS[-1]:
            message = message.copy(options={**message.options, "eta": int(time.time() * 1000) + delay})
        if announce:
            # Middleware (``JobSubmission``) stamps the job options the topology routes by: emit first. A
            # message sent elsewhere (a report to ``failed-jobs``) is not a job and is never routed.
            self.emit_before("enqueue", message, delay)
            message = self._route(message)
        queue_name = q_name(message.queue_name)
        in_topology = self.topology is not None and self.topology.has(queue_name)

        def publish() -> None:
            if in_topology:
                pass  # never declared on send: a queue the topology has not applied is refused (mandatory)
            elif announce:
                self.declare_queue(queue_name, ensure=True)
            else:
                self._ensure_unannounced(queue_name)
            exchange = ""
            if bucket is not None:
                self._declare_wait_bucket(bucket)
                exchange = self.wait_queue_name(bucket)
            self.logger.debug("Enqueueing message %r on %r (delay %s).", message.message_id, queue_name, delay)
            self.channel.basic_publish(
                exchange=exchange,
                routing_key=self.physical(queue_name),
                body=message.encode(),
                # No headers on purpose: a copied x-delivery-count would be trusted by the broker.
                properties=pika.BasicProperties(
                    delivery_mode=2,
                    message_id=message.message_id,
                    content_type="application/json",
                    expiration=str(delay) if bucket is not None and delay < bucket else None,
                ),
                mandatory=self.confirm_delivery,
            )
            if announce:
                self.emit_after("enqueue", message, delay)

        self._with_reconnect(publish, queue_name, must_exist=in_topology)
        return message

    def _route(self, message: Message) -> Message:
        """The message addressed to the queue its job options name (topology mode), else as it is."""
        if self.topology is None or self.topology.has(q_name(message.queue_name)) or OPTION_KEY not in message.options:
            return message
        job = JobOptions.from_options(message.options, message_id=message.message_id)
        try:
            return message.copy(queue_name=self.topology.route(job))
        except ValueError as e:
            raise NoSuchQueue(f"job {job.job_id} ({message.actor_name}) not sent: {e}") from None

    def publish_raw(self, queue_name: str, body: bytes) -> None:
        """Publish ``body`` as it is to work queue ``queue_name`` (hands back a message taken during a drain)."""
        queue_name = q_name(queue_name)

        def publish() -> None:
            self.declare_queue(queue_name, ensure=True)
            self.channel.basic_publish(
                exchange="",
                routing_key=self.physical(queue_name),
                body=body,
                properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                mandatory=self.confirm_delivery,
            )

        self._with_reconnect(publish, queue_name)

    def publish_plain(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: dict | None = None,
        declare_with: dict | None = None,
        must_route: bool = True,
    ) -> None:
        """Publish ``body`` to queue ``routing_key`` (a physical name) through the default exchange, confirmed.

        For what is not a job: stream chunks (the queue is declared with ``declare_with``, once per channel)
        and replies to a waiting submitter, whose queue may be gone (``must_route=False``: then it is dropped).
        """

        def publish() -> None:
            channel = self.channel
            declared = channel.__dict__.setdefault("_burrow_declared", set())
            if declare_with is not None and routing_key not in declared:
                channel.queue_declare(queue=routing_key, durable=True, arguments=declare_with)
                declared.add(routing_key)
            channel.basic_publish(
                exchange="",
                routing_key=routing_key,
                body=body,
                properties=pika.BasicProperties(delivery_mode=2, headers=headers or None),
                mandatory=must_route and self.confirm_delivery,
            )

        self._with_reconnect(publish, routing_key)

    def broadcast_cancel(self, job_id: str) -> None:
        """Tell every worker process that job ``job_id`` was cancelled (``node.middleware.cancel``); best
        effort and unconfirmed routing: a worker that misses it sees the cancel in the record."""
        exchange = self.queue_prefix + CANCEL_EXCHANGE

        def publish() -> None:
            channel = self.channel
            declared = channel.__dict__.setdefault("_burrow_declared", set())
            if exchange not in declared:
                channel.exchange_declare(exchange=exchange, exchange_type="fanout", durable=True)
                declared.add(exchange)
            channel.basic_publish(exchange=exchange, routing_key="", body=json.dumps({"job_id": job_id}).encode())

        self._with_reconnect(publish, exchange)

    def dead_letter(self, queue_name: str, body: bytes, *, reason: str, detail: str = "") -> None:
        """Put ``body`` into ``queue_name``'s dead-letter queue with ``reason`` (and ``detail``) in its headers.

        Used when Burrow itself decides a message is dead (malformed, expired, …), so the reason is explicit
        rather than the broker's generic ``rejected``.
        """
        queue_name = q_name(queue_name)

        def publish() -> None:
            self.declare_queue(queue_name, ensure=True)
            self.channel.basic_publish(
                exchange=self.dead_letter_exchange,
                routing_key=self.physical(xq_name(queue_name)),
                body=body,
                properties=pika.BasicProperties(
                    delivery_mode=2,
                    headers={REASON_HEADER: str(reason), DETAIL_HEADER: detail[:4000]},
                    timestamp=int(time.time()),
                ),
                mandatory=self.confirm_delivery,
            )

        self._with_reconnect(publish, queue_name)
        metrics.dead_letters.add(1, {"queue": queue_name, "reason": str(reason)})

    def _with_reconnect(self, operation, queue_name: str, *, must_exist: bool = False) -> Any:
        # Dramatiq's enqueue retries immediately; a broker restart takes seconds, so retry with pauses.
        last_error: Exception | None = None
        deadline = current_deadline()
        for number, pause in enumerate(PUBLISH_RETRY_DELAYS_S):
            if number and deadline is not None and deadline.remaining() < pause:
                break  # the caller's time is up (e.g. the SIGTERM grace): fail now rather than overrun it
            time.sleep(pause)
            try:
                return operation()
            except QueueMismatchError:
                raise
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                last_error = e
                del self.connection
                self._wait_buckets_declared.clear()
                self._unannounced.clear()
                if isinstance(e, pika.exceptions.UnroutableError):
                    if must_exist:
                        raise NoSuchQueue(
                            f"queue {self.physical(queue_name)!r} is in the topology but not on the broker: "
                            "run `burrow topology apply`"
                        ) from None
                    self.queues_pending.add(queue_name)
                self.logger.debug("Publish failed (%s); reconnecting.", e)
            except ConnectionClosed as e:
                last_error = e
                del self.connection
        raise ConnectionClosed(last_error) from None

    # -- consuming and inspection -------------------------------------------------------------------------

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> QuorumConsumer:
        if queue_name == self.SLOT_QUEUE and self.serves:
            for name in self.serves:
                self.declare_queue(name, ensure=True)
            limits = self.topology.prefetches(self.serves) if self.topology else {}
            return PriorityConsumer(self, queue_name, self.serves, prefetch, timeout, limits)
        self.declare_queue(queue_name, ensure=True)
        return self.consumer_class(self, queue_name, prefetch, timeout)

    def release(self, message: Message, timeout_s: float = 5.0) -> bool:
        """Ack ``message``'s delivery while its job runs on (``QuorumConsumer.release``); True once sent."""
        consumer = self.consumers_by_queue.get(message.queue_name)
        if consumer is None or getattr(message, "_tag", None) is None:
            return False
        return consumer.release(message).wait(timeout_s)

    def inspect_queue(self, queue_name: str) -> tuple[int, int] | None:
        """(ready messages, subscribed consumers) of a queue, or ``None`` if the broker lacks it; declares
        nothing (a passive declare, whose 404 closes the channel: a fresh one is opened next time). A lost
        connection (a cluster node gone) is replaced, as for a publish."""

        def look() -> tuple[int, int] | Exception | None:
            try:
                method = self.channel.queue_declare(self.physical(queue_name), passive=True).method
            except pika.exceptions.ChannelClosedByBroker as e:
                del self.channel
                # A refusal (e.g. 403, access refused) is an answer, not a lost connection: not retried.
                return None if e.reply_code == 404 else e
            return method.message_count, method.consumer_count

        found = self._with_reconnect(look, queue_name)
        if isinstance(found, Exception):
            raise found
        return found

    def get_declared_delay_queues(self) -> set[str]:
        return set()

    def get_queue_message_counts(self, queue_name: str) -> tuple[int, int, int]:
        """Ready messages in the work queue, 0 (no delay queue) and messages in its dead-letter queue."""
        queue_name = q_name(queue_name)
        self.declare_queue(queue_name, ensure=True)
        ready = self._declare_queue(queue_name).method.message_count
        dead = self._declare_xq_queue(queue_name).method.message_count
        return ready, 0, dead

    def flush(self, queue_name: str) -> None:
        for name in (q_name(queue_name), xq_name(queue_name)):
            try:
                self.channel.queue_purge(self.physical(name))
            except pika.exceptions.AMQPChannelError:
                del self.channel
