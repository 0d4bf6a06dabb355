"""Live progress: a running job's ``progress()`` reaches its record every few seconds, not only at the end."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .job import JobContext
from .job_record import RecordStore

logger = logging.getLogger(__name__)


class ProgressReporter:
    """Writes a job's latest progress into its record every ``every_s`` seconds while it changes.

    Parameters:
        records: The record store.
        context: The running job.
        every_s: Interval between writes.
    """

    def __init__(self, records: RecordStore, context: JobContext, *, every_s: float) -> None:
        self.records = records
        self.context = context
        self.every_s = every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{context.job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting (the lifecycle writes the final progress with the attempt's end)."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        written: dict[str, Any] | None = None
        while not self._stopped.wait(self.every_s):
            progress = self.context.progress_value
            if progress is None or progress == written:
                continue
            try:
                self.records.update(self.context.job_id, lambda record, p=progress: record.update(progress=p))
                written = progress
            except Exception as e:  # an observer never breaks the job
                logger.debug("Progress of job %s not written: %s", self.context.job_id, e)
