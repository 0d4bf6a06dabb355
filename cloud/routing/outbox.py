"""Exactly-once hand-off for the router: what handling a message publishes is committed with its ack.

The router's consumer channel is in AMQP transaction mode. A handler does not publish; it lists what to
publish (``Outgoing``) on the message, and the consumer publishes it and acks the message in one
``tx.commit``. A router killed before the commit published nothing and acked nothing: the broker redelivers
the message and the next router handles it again. Killed after it, both happened. So a re-dispatch is
published once per failure however often routers die (RabbitMQ's ``tx.commit`` answers once the
publishes are enqueued, like a publisher confirm; a channel cannot use both, so this replaces confirms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika
import pika.exceptions
from dramatiq.errors import ConnectionClosed

from node.broker.consumer import QuorumConsumer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """A message to publish when the message being handled is acked."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    content_type: str = "application/json"

    def properties(self) -> pika.BasicProperties:
        return pika.BasicProperties(
            delivery_mode=2, headers=self.headers, message_id=self.message_id, content_type=self.content_type
        )


def outbox_of(message: Any) -> list[Outgoing]:
    """The list of ``Outgoing`` to commit with ``message``'s ack (created on first use)."""
    outbox = getattr(message, "outbox", None)
    if outbox is None:
        outbox = []
        message.outbox = outbox
    return outbox


class TransactionalConsumer(QuorumConsumer):
    """A ``QuorumConsumer`` whose acks (and rejects) are committed together with the message's outbox."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            self.channel.tx_select()
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None

    def ack(self, message: Any) -> None:
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            logger.warning("Not acking message %s: not delivered on this channel.", message.message_id)
            return
        outbox = list(getattr(message, "outbox", None) or [])
        try:
            self.connection.add_callback_threadsafe(partial(self._commit, message._tag, outbox, True))
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None

    def _nack(self, tag: int) -> None:
        self.connection.add_callback_threadsafe(partial(self._commit, tag, [], False))

    def _commit(self, tag: int, outbox: list[Outgoing], ack: bool) -> None:
        for out in outbox:
            self.channel.basic_publish(out.exchange, out.routing_key, out.body, out.properties())
        if ack:
            self.channel.basic_ack(tag)
        else:
            self.channel.basic_nack(tag, requeue=False)
        self.channel.tx_commit()

    def _settle(self, tag: int, *, ack: bool, requeue: bool = False) -> None:
        super()._settle(tag, ack=ack, requeue=requeue)
        try:
            self.channel.tx_commit()
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None
