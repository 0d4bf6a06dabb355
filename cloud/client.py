"""Connect a cloud service (or the CLI) to the job network: a broker for ``actor.send()``."""

from __future__ import annotations

import importlib

import dramatiq

from node.broker import QuorumRabbitmqBroker
from node.middleware import JobSubmission
from node.settings import Settings


def connect(settings: Settings) -> QuorumRabbitmqBroker:
    """Set the global Dramatiq broker and import the actor modules, so ``actor.send()`` works.

    The broker declares queues with the same arguments as the nodes (``BURROW_DELIVERY_LIMIT``,
    ``BURROW_QUEUE_PREFIX``): RabbitMQ refuses a queue redeclared with other arguments.
    """
    broker = QuorumRabbitmqBroker(
        url=settings.amqp_url,
        delivery_limit=settings.delivery_limit,
        queue_prefix=settings.queue_prefix,
        heartbeat_s=settings.heartbeat_s,
        middleware=[JobSubmission()],
    )
    dramatiq.set_broker(broker)
    for module in settings.actor_modules:
        importlib.import_module(module)
    return broker
