"""Applying a topology file to the broker, and comparing the two (``burrow topology apply|show``)."""

from __future__ import annotations

from dataclasses import dataclass

from node.broker import QuorumRabbitmqBroker
from node.contract.topology import Topology


@dataclass(frozen=True)
class QueueState:
    name: str
    ready: int | None  # None: the queue does not exist on the broker


def apply(broker: QuorumRabbitmqBroker, topology: Topology) -> list[str]:
    """Declare every work queue of ``topology`` (and its dead-letter queue); idempotent. Returns the names.

    Raises ``QueueMismatchError`` naming a queue that exists with other arguments (RabbitMQ freezes them).
    """
    names = topology.queue_names()
    for name in names:
        broker.declare_queue(name, ensure=True)
    return names


def show(broker: QuorumRabbitmqBroker, topology: Topology) -> list[QueueState]:
    """Each queue of ``topology`` with its ready count, or ``None`` where the broker lacks it."""
    states = []
    for name in topology.queue_names():
        found = broker.inspect_queue(name)
        states.append(QueueState(name, found[0] if found is not None else None))
    return states
