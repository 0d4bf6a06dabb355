"""Set how many messages each worker process holds."""

from __future__ import annotations

import dramatiq


class Prefetch(dramatiq.Middleware):
    """Sets the worker's queue prefetch before its consumers start.

    Dramatiq prefetches ``threads × 2`` messages, i.e. 2 even with ``--threads 1``: a busy GPU process would
    hold a second job it is not running, and a crash would spend that job's delivery count too.

    Parameters:
        prefetch: Messages per worker process (1 for GPU jobs).
    """

    def __init__(self, *, prefetch: int = 1) -> None:
        self.prefetch = prefetch

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.queue_prefetch = self.prefetch
