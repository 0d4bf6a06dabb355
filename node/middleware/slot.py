"""With a topology, one consumer serves every queue of a worker: Dramatiq must find it under each name."""

from __future__ import annotations

import dramatiq


class SlotConsumer(dramatiq.Middleware):
    """Makes the worker's one ``PriorityConsumer`` the consumer of each queue it serves.

    Dramatiq's worker acks a message through ``worker.consumers[message.queue_name]``; a message taken from
    ``acme.sync.llama3-8b.urgent`` must find the slot's consumer (the one ``QuorumRabbitmqBroker.SLOT_QUEUE``
    names) under that name. Without a topology this does nothing.
    """

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        slot = worker.consumers.get(getattr(broker, "SLOT_QUEUE", ""))
        if slot is None:
            return
        for queue_name in getattr(broker, "serves", []):
            worker.consumers.setdefault(queue_name, slot)
