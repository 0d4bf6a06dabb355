"""Stop taking new jobs the moment a worker starts shutting down."""

from __future__ import annotations

import logging

import dramatiq

logger = logging.getLogger(__name__)


class StopConsumingOnShutdown(dramatiq.Middleware):
    """Cancels every consumer when shutdown begins, while the job in hand finishes.

    Dramatiq keeps consuming during a graceful drain, so the worker pulls a message it will never run and
    spends one of that message's deliveries. Cancelling the consumer (its connection stays serviced, so the
    running job's ack and heartbeats still flow) returns nothing to the queue that was not started.
    """

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        for thread in worker.consumers.values():
            consumer = getattr(thread, "consumer", None)
            request_cancel = getattr(consumer, "request_cancel", None)
            if request_cancel is not None:
                request_cancel()
