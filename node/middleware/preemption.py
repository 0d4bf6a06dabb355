"""Preemption: turn the provider's SIGTERM into ``should_stop`` for every running job, at once."""

from __future__ import annotations

import logging
import signal
import threading

import dramatiq

from .. import _running

logger = logging.getLogger(__name__)


class Preemption(dramatiq.Middleware):
    """Asks running jobs to stop (checkpoint and hand back) as soon as the worker is told to shut down.

    Dramatiq's worker notices SIGTERM only at its next one-second tick and then merely waits for jobs to
    finish. This middleware chains onto the SIGTERM handler so jobs see ``should_stop`` immediately, and also
    stops them when shutdown begins for any other reason. Jobs that hand back are re-run elsewhere, counted
    as interruptions; the worker's shutdown timeout (``BURROW_GRACE_S``) bounds how long they have.
    """

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            count = _running.stop_all("preempted")
            logger.info("SIGTERM: asked %d running job(s) to checkpoint and hand back.", count)
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        _running.stop_all("preempted")
