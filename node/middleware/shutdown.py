"""Shutdown: on SIGTERM, stop taking work and ask every running job to checkpoint and hand back, at once."""

from __future__ import annotations

import logging
import signal
import threading

import dramatiq

from ..attempt import running

logger = logging.getLogger(__name__)


def stop_consuming(worker: dramatiq.Worker) -> None:
    """Ask every consumer of ``worker`` to stop taking deliveries (see ``QuorumConsumer.request_cancel``)."""
    for thread in list(worker.consumers.values()):
        request_cancel = getattr(getattr(thread, "consumer", None), "request_cancel", None)
        if request_cancel is not None:
            request_cancel()


class Shutdown(dramatiq.Middleware):
    """Turns the provider's SIGTERM into "take nothing more" and ``should_stop`` for every running job.

    Dramatiq's worker notices SIGTERM only at its next one-second tick, keeps consuming while it drains (a
    message pulled then spends one of its deliveries), and merely waits for jobs to finish. This chains onto
    the SIGTERM handler: consumers stop at once (a message that still arrives is handed back untouched) and
    jobs see ``should_stop`` immediately. Jobs that hand back are re-run elsewhere, counted as interruptions;
    the worker's shutdown timeout (``BURROW_GRACE_S``) bounds how long they have.
    """

    def __init__(self) -> None:
        self.worker: dramatiq.Worker | None = None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.worker = worker

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            self._stop()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.worker = worker
        self._stop()

    def _stop(self) -> None:
        running.shutdown_began()
        if self.worker is not None:
            stop_consuming(self.worker)
        count = running.stop_all("preempted")
        if count:
            logger.info("Shutting down: asked %d running job(s) to checkpoint and hand back.", count)
