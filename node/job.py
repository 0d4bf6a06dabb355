"""The job context: what an actor uses to survive the machine it runs on.  (Public: actor authors import this.)

from node.job import current_job

@dramatiq.actor(queue_name="training", checkpoint_every_s=60)
def train(seed: int, steps: int) -> None:
    job = current_job()
    state = decode(job.checkpoint.load()) or fresh(seed)   # resumes automatically after a crash
    while state.step < steps:
        state = work(state)
        job.progress(state.step / steps)
        if job.should_stop:                                # preemption (SIGTERM), timeout or fencing
            job.checkpoint.save(encode(state))
            job.hand_back()
        if job.checkpoint.due():
            job.checkpoint.save(encode(state))             # returns at once; uploads in the background
    job.artifacts.put("result.json", encode_result(state))  # stored before the message is acked
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from . import _running
from .checkpoints import Checkpointer
from .errors import BurrowError
from .job_options import JobOptions
from .storage import Storage

__all__ = ["Artifacts", "JobCheckpoint", "JobContext", "Preempted", "current_job"]

logger = logging.getLogger(__name__)


class Preempted(BurrowError):
    """Raised by ``JobContext.hand_back()``: the job stops here and is re-run elsewhere from its checkpoint."""


class JobCheckpoint(Checkpointer):
    """A ``Checkpointer`` that also knows the actor's checkpoint interval (``checkpoint_every_s``)."""

    def __init__(self, *args: Any, every_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every_s = every_s
        self._started_at = time.time()

    def due(self) -> bool:
        """True when ``checkpoint_every_s`` has passed since the last save (or the attempt's start)."""
        return time.time() - (self.last_save_at or self._started_at) >= self.every_s


class Artifacts:
    """Results of the job, stored under ``jobs/<job_id>/artifacts/`` before the message is acked."""

    def __init__(self, storage: Storage, job_id: str, *, attempts: int = 5) -> None:
        self.storage = storage
        self.job_id = job_id
        self.attempts = attempts
        self.keys: dict[str, str] = {}

    def put(self, name: str, data: bytes | str | os.PathLike[str]) -> str:
        """Store ``data`` (bytes or a file path) as artifact ``name``; returns its storage key.

        Retries a failing store with backoff; raises ``StorageError`` if it stays down (the attempt then fails
        and is retried later, so nothing is acked without its results).
        """
        key = f"jobs/{self.job_id}/artifacts/{name}"
        pause = 0.5
        for attempt in range(self.attempts):
            try:
                if isinstance(data, bytes | bytearray | memoryview):
                    self.storage.put(key, bytes(data))
                else:
                    self.storage.upload_file(key, Path(data))
                self.keys[name] = key
                return key
            except Exception as e:
                if attempt == self.attempts - 1:
                    raise
                logger.warning("Artifact %s not stored (%s); retrying in %.1fs.", key, e, pause)
                time.sleep(pause)
                pause = min(10.0, pause * 2)
        raise AssertionError("unreachable")


class JobContext:
    """One attempt of one job, as its actor sees it.

    Attributes:
        job_id: The job's stable id.
        attempt: This attempt's number (1 for the first run of the job anywhere).
        options: The job's options (type, model, priority, counters …).
        checkpoint: Save and load checkpoints (``save``, ``load``, ``load_to``, ``due``).
        artifacts: Store results (``put``).
    """

    def __init__(
        self,
        *,
        options: JobOptions,
        attempt: int,
        checkpoint: JobCheckpoint,
        artifacts: Artifacts,
    ) -> None:
        self.options = options
        self.job_id = options.job_id
        self.attempt = attempt
        self.checkpoint = checkpoint
        self.artifacts = artifacts
        self.stop_reason: str | None = None
        self.progress_value: dict[str, Any] | None = None
        self._stop = threading.Event()

    @property
    def should_stop(self) -> bool:
        """True once the job is asked to stop: preemption, its reservation timed out, or it was fenced out."""
        return self._stop.is_set()

    def request_stop(self, reason: str) -> None:
        """Ask the actor to stop at its next check (the first reason given is kept)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            logger.info("Job %s attempt %d asked to stop: %s", self.job_id, self.attempt, reason)
            self._stop.set()

    def wait_for_stop(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, waking early if a stop is requested (for actors that poll)."""
        return self._stop.wait(timeout_s)

    def progress(self, fraction: float, note: str = "") -> None:
        """Report progress (0..1); written to the job record every few seconds and when the attempt ends."""
        self.progress_value = {"fraction": max(0.0, min(1.0, float(fraction))), "note": note, "at": time.time()}

    def hand_back(self) -> None:
        """Stop here and let the job re-run elsewhere from its last checkpoint (save one first)."""
        raise Preempted(self.stop_reason or "handed back")


def current_job() -> JobContext:
    """The job context of the running actor.

    Raises:
        RuntimeError: Called outside an actor run by a Burrow node.
    """
    context = _running.current()
    if context is None:
        raise RuntimeError("current_job() is only available inside an actor run by a Burrow node")
    return context
