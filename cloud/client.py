"""Connect a cloud service (or the CLI) to the job network: a broker for ``actor.send()``."""

from __future__ import annotations

import dramatiq
import pika
import pika.exceptions

from node.broker import QuorumRabbitmqBroker
from node.broker.tls import apply_ca
from node.contract.topology import load_topology
from node.middleware import JobSubmission, Tracing
from node.settings import Settings, import_actor_modules, mask_url

from .errors import BrokerUnreachable


def check_reachable(settings: Settings, *, timeout_s: float = 5.0) -> None:
    """Raise ``BrokerUnreachable`` unless one of ``AMQP_URL``'s brokers accepts a connection within ``timeout_s``."""
    reasons = []
    for url in settings.amqp_url.split(";"):
        parameters = pika.URLParameters(url)
        apply_ca([parameters], settings.amqp_ca_file)
        parameters.connection_attempts = 1
        parameters.socket_timeout = timeout_s
        parameters.blocked_connection_timeout = timeout_s
        try:
            pika.BlockingConnection(parameters).close()
            return
        except pika.exceptions.AMQPError as e:
            reasons.append(f"{mask_url(url)}: {type(e).__name__} {e}".strip())
        except OSError as e:
            reasons.append(f"{mask_url(url)}: {e}")
    raise BrokerUnreachable("cannot reach RabbitMQ (" + "; ".join(reasons) + ")")


def connect(settings: Settings, *, check: bool = True) -> QuorumRabbitmqBroker:
    """Set the global Dramatiq broker and import the actor modules, so ``actor.send()`` works.

    The broker declares queues with the same arguments as the nodes (``BURROW_DELIVERY_LIMIT``,
    ``BURROW_QUEUE_PREFIX``): RabbitMQ refuses a queue redeclared with other arguments.

    Raises:
        BrokerUnreachable: ``check`` is on and no broker answered.
    """
    if check:
        check_reachable(settings)
    broker = QuorumRabbitmqBroker(
        url=settings.amqp_url,
        delivery_limit=settings.delivery_limit,
        queue_prefix=settings.queue_prefix,
        heartbeat_s=settings.heartbeat_s,
        middleware=[JobSubmission(signer=settings.signer()), Tracing()],
        ca_file=settings.amqp_ca_file,
        topology=load_topology(settings.topology) if settings.topology else None,
    )
    dramatiq.set_broker(broker)
    for module in import_actor_modules(settings.actor_modules):
        # A module imported earlier (by another client in this process) declared its actors on that client's
        # broker: declare them on this one too.
        for value in list(vars(module).values()):
            if isinstance(value, dramatiq.Actor) and value.actor_name not in broker.actors:
                dramatiq.actor(
                    value.fn,
                    broker=broker,
                    actor_name=value.actor_name,
                    queue_name=value.queue_name,
                    priority=value.priority,
                    **value.options,
                )
    return broker
