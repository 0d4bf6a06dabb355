"""Set how many messages each worker process holds."""

from __future__ import annotations

import dramatiq


class Prefetch(dramatiq.Middleware):
    """Sets the worker's queue prefetch before its consumers start.

    Dramatiq prefetches ``threads × 2`` messages, i.e. 2 even with ``--threads 1``: a busy GPU process would
    hold a second job it is not running, and a crash would spend that job's delivery count too.

    It also shortens the consumers' idle timeout (Dramatiq's default is 1 s): a consumer notices a shutdown
    between deliveries only when it wakes, and a draining node must stop taking work quickly.

    Parameters:
        prefetch: Messages per worker process (1 for GPU jobs).
        consumer_timeout_ms: How long a consumer waits for a delivery before it looks around again.
    """

    def __init__(self, *, prefetch: int = 1, consumer_timeout_ms: int = 200) -> None:
        self.prefetch = prefetch
        self.consumer_timeout_ms = consumer_timeout_ms

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.queue_prefetch = self.prefetch
        worker.worker_timeout = self.consumer_timeout_ms
        broker.worker_threads = worker.worker_threads  # a consumer with spare prefetch holds acks to batch them
