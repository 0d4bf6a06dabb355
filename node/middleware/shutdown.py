"""Shutdown: on SIGTERM, stop taking work and ask every running job to checkpoint and hand back, at once."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import dramatiq

from ..attempt import drain, running

logger = logging.getLogger(__name__)

#: Longest a worker waits for its consumers to confirm they stopped before it notes so anyway.
STOP_NOTE_PATIENCE_S = 10.0


def stop_consuming(worker: dramatiq.Worker) -> None:
    """Ask every consumer of ``worker`` to stop taking deliveries (see ``QuorumConsumer.request_cancel``)."""
    for thread in list(worker.consumers.values()):
        request_cancel = getattr(getattr(thread, "consumer", None), "request_cancel", None)
        if request_cancel is not None:
            request_cancel()


def consumers_stopped(worker: dramatiq.Worker) -> bool:
    """Whether every consumer of ``worker`` has stopped taking deliveries."""
    for thread in list(worker.consumers.values()):
        consumer = getattr(thread, "consumer", None)
        if consumer is not None and not getattr(consumer, "stopped", True):
            return False
    return True


class Shutdown(dramatiq.Middleware):
    """Turns the provider's SIGTERM into "take nothing more" and ``should_stop`` for every running job.

    Dramatiq's worker notices SIGTERM only at its next one-second tick, keeps consuming while it drains (a
    message pulled then spends one of its deliveries), and merely waits for jobs to finish. This chains onto
    the SIGTERM handler: consumers stop at once (a message that still arrives is handed back untouched) and
    jobs see ``should_stop`` immediately. Jobs that hand back are re-run elsewhere, counted as interruptions;
    the worker's shutdown timeout (``BURROW_GRACE_S``) bounds how long they have. With ``slots_dir``, the
    worker notes when its consumers have all stopped, which is what this node's hand-backs wait for.
    """

    def __init__(self, *, slots_dir: Path | None = None, slot_id: str = "") -> None:
        self.worker: dramatiq.Worker | None = None
        self.slots_dir = slots_dir
        self.slot_id = slot_id
        self._noting: threading.Thread | None = None

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
            if self.slots_dir is not None and self._noting is None:
                self._noting = threading.Thread(target=self._note_when_stopped, name="burrow-drain", daemon=True)
                self._noting.start()
        count = running.stop_all("preempted")
        if count:
            logger.info("Shutting down: asked %d running job(s) to checkpoint and hand back.", count)

    def _note_when_stopped(self) -> None:
        """Once every consumer has stopped, tell this node's draining workers (``node.attempt.drain``)."""
        assert self.worker is not None and self.slots_dir is not None
        deadline = time.monotonic() + STOP_NOTE_PATIENCE_S
        while not consumers_stopped(self.worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            drain.note_stopped(self.slots_dir, self.slot_id)
        except OSError as e:
            logger.warning("Could not note that slot %s stopped taking work: %s", self.slot_id, e)
