"""The job context implementation: what an actor's ``current_job()`` returns for one attempt.

The public surface (what actor authors may rely on) is ``node.job``; this module is runtime internals.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..contract.job_options import JobOptions
from ..errors import Preempted
from ..retrying import Deadline, retry
from ..storage import Storage
from .checkpoints import Checkpointer

logger = logging.getLogger(__name__)


def artifact_key(job_id: str, attempt_id: str, name: str) -> str:
    """Where attempt ``attempt_id`` stores artifact ``name``: under the attempt, so a stale attempt can never
    overwrite what a newer one stored; the record's ``artifacts`` map (written only by the newest attempt)
    says which attempt's artifacts are the job's."""
    return Storage.check_key(f"jobs/{job_id}/artifacts/{attempt_id}/{name}")


class JobCheckpoint(Checkpointer):
    """A ``Checkpointer`` that also knows the actor's checkpoint interval (``checkpoint_every_s``)."""

    def __init__(self, *args: Any, every_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every_s = every_s
        self._started_at = time.monotonic()

    def due(self) -> bool:
        """True when ``checkpoint_every_s`` has passed since the last save (or the attempt's start)."""
        return time.monotonic() - (self.last_save_monotonic or self._started_at) >= self.every_s


class Artifacts:
    """Results of one attempt, stored before the message is acked.

    Parameters:
        storage: Where artifacts go.
        job_id: The job.
        attempt_id: The attempt (artifacts are stored under it).
        patience_s: How long ``put`` retries a failing store before raising.
    """

    def __init__(self, storage: Storage, job_id: str, attempt_id: str, *, patience_s: float = 60.0) -> None:
        self.storage = storage
        self.job_id = job_id
        self.attempt_id = attempt_id
        self.patience_s = patience_s
        self.keys: dict[str, str] = {}

    def put(self, name: str, data: bytes | str | os.PathLike[str]) -> str:
        """Store ``data`` (bytes or a file path) as artifact ``name`` (e.g. ``result.json``); returns its key.

        Retries a failing store; raises ``StorageError`` if it stays down (the attempt then fails and is
        retried later, so nothing is acked without its results).
        """
        key = artifact_key(self.job_id, self.attempt_id, name)

        def store() -> None:
            if isinstance(data, bytes | bytearray | memoryview):
                self.storage.put(key, bytes(data))
            else:
                self.storage.upload_file(key, Path(data))

        retry(store, deadline=Deadline(self.patience_s), what=f"Storing artifact {key}")
        self.keys[name] = key
        return key


class AttemptContext:
    """One attempt of one job, as its actor sees it (see ``node.job.JobContext`` for the contract)."""

    def __init__(
        self,
        *,
        options: JobOptions,
        attempt: int,
        attempt_id: str,
        checkpoint: JobCheckpoint,
        artifacts: Artifacts,
        node_id: str = "",
        slot: str = "",
    ) -> None:
        self.options = options
        self.job_id = options.job_id
        self.attempt = attempt
        self.attempt_id = attempt_id
        self.checkpoint = checkpoint
        self.artifacts = artifacts
        self.node_id = node_id
        self.slot = slot
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
        self.progress_value = {
            "fraction": max(0.0, min(1.0, float(fraction))),
            "note": str(note)[:200],
            "at": time.time(),
        }

    def hand_back(self) -> None:
        """Stop here and let the job re-run elsewhere from its last checkpoint (save one first)."""
        raise Preempted(self.stop_reason or "handed back")
