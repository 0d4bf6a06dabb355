"""The job record (``jobs/<job_id>/record.json``): one status enum, one owner of transitions, safe updates.

Every change is a read-modify-write guarded by a conditional write (``if_match`` / ``if_none_match``), retried
on conflict, so concurrent writers (two nodes, a node and the router) never lose each other's updates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from .errors import NodeError, PreconditionFailed
from .policy import Outcome
from .storage import Storage

logger = logging.getLogger(__name__)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    QUARANTINED = "quarantined"


_ALLOWED: dict[JobStatus | None, set[JobStatus]] = {
    None: {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.EXPIRED, JobStatus.FAILED},
    JobStatus.QUEUED: {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.EXPIRED, JobStatus.FAILED, JobStatus.QUARANTINED},
    JobStatus.RUNNING: {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED},
    # The router may re-dispatch a failed job, or quarantine it.
    JobStatus.FAILED: {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.QUARANTINED, JobStatus.FAILED},
    JobStatus.EXPIRED: {JobStatus.EXPIRED, JobStatus.QUARANTINED},
    # An operator may requeue a quarantined job.
    JobStatus.QUARANTINED: {JobStatus.QUEUED, JobStatus.QUARANTINED},
    JobStatus.SUCCEEDED: {JobStatus.SUCCEEDED},
}


class InvalidTransition(NodeError):
    """A status change the job lifecycle does not allow (e.g. anything after *succeeded*)."""


def transition(current: JobStatus | None, new: JobStatus) -> JobStatus:
    """Return ``new`` if a job may go from ``current`` to it, else raise ``InvalidTransition``."""
    if new not in _ALLOWED[current]:
        raise InvalidTransition(f"job status cannot go from {current.value if current else 'none'} to {new.value}")
    return new


def record_key(job_id: str) -> str:
    return f"jobs/{job_id}/record.json"


def new_record(job_id: str, *, actor: str, queue: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "actor": actor,
        "queue": queue,
        "status": None,
        "attempts": [],
        "checkpoint": None,
        "artifacts": {},
        "progress": None,
        "reason": None,
        "updated_at": None,
    }


def status_of(record: dict[str, Any]) -> JobStatus | None:
    return JobStatus(record["status"]) if record.get("status") else None


def set_status(record: dict[str, Any], new: JobStatus, *, reason: str | None = None) -> None:
    """The only way a record's status changes."""
    record["status"] = transition(status_of(record), new).value
    if reason is not None:
        record["reason"] = reason


class RecordStore:
    """Reads and updates job records in ``storage``.

    Parameters:
        storage: Where records live.
        attempts: How many conflicting writes to retry before giving up.
    """

    def __init__(self, storage: Storage, *, attempts: int = 50) -> None:
        self.storage = storage
        self.attempts = attempts

    def get(self, job_id: str) -> dict[str, Any] | None:
        info = self.storage.head(record_key(job_id))
        if info is None:
            return None
        return json.loads(self.storage.get(info.key)[0])

    def update(
        self, job_id: str, mutate: Callable[[dict[str, Any]], Any], *, actor: str = "", queue: str = ""
    ) -> tuple[dict[str, Any], Any]:
        """Apply ``mutate`` to the record (created if absent) and store it; returns (record, mutate's value).

        ``mutate`` may run more than once (after a conflict) and must only change the record it is given.
        """
        key = record_key(job_id)
        for attempt in range(self.attempts):
            info = self.storage.head(key)
            if info is None:
                record, etag = new_record(job_id, actor=actor, queue=queue), None
            else:
                data, got = self.storage.get(key)
                record, etag = json.loads(data), got.etag
            value = mutate(record)
            record["updated_at"] = time.time()
            body = json.dumps(record, indent=1).encode()
            try:
                if etag is None:
                    self.storage.put(key, body, if_none_match=True)
                else:
                    self.storage.put(key, body, if_match=etag)
                return record, value
            except PreconditionFailed:
                logger.debug("Record %s changed under us (try %d); re-reading.", job_id, attempt + 1)
                time.sleep(min(0.5, 0.01 * 2**attempt))
        raise PreconditionFailed(f"could not update {key} after {self.attempts} conflicting writes")

    def update_patiently(
        self, job_id: str, mutate: Callable[[dict[str, Any]], Any], *, patience_s: float = 120.0
    ) -> tuple[dict[str, Any], Any]:
        """``update``, retried with backoff through a storage outage of up to ``patience_s`` seconds.

        For writes that must land before a message is acked (how an attempt ended).
        """
        deadline = time.monotonic() + patience_s
        pause = 0.5
        while True:
            try:
                return self.update(job_id, mutate)
            except Exception as e:
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning("Record of job %s not written (%s); retrying in %.1fs.", job_id, e, pause)
                time.sleep(pause)
                pause = min(10.0, pause * 2)


def begin_attempt(
    record: dict[str, Any],
    *,
    node: str,
    slot: str,
    pid: int,
    message_id: str,
    delivery_count: int,
    now: float,
) -> tuple[int, Outcome | None] | None:
    """Open a new attempt in ``record``; ``None`` if the job already succeeded (nothing to run).

    An earlier attempt that never ended is closed first: as *crashed* if it ran on this node (its process
    died: the job's fault, as far as anyone can tell) or *lost* if it ran elsewhere (the node vanished).
    Returns the new attempt's number and how an unfinished earlier attempt was closed, if there was one.
    """
    if status_of(record) is JobStatus.SUCCEEDED:
        return None
    attempts = record["attempts"]
    closed = None
    if attempts and attempts[-1]["outcome"] is None:
        closed = Outcome.CRASHED if attempts[-1]["node"] == node else Outcome.LOST
        attempts[-1].update(
            outcome=closed.value, ended_at=now, error="the attempt ended without a word (process or node died)"
        )
    elif attempts and attempts[-1].get("killed") == "uncounted":
        # Killed for overrunning its reservation: the message came back by redelivery, with old counters.
        closed = Outcome.TIMED_OUT
        attempts[-1]["killed"] = "counted"
    attempts.append(
        {
            "number": len(attempts) + 1,
            "node": node,
            "slot": slot,
            "pid": pid,
            "message_id": message_id,
            "delivery_count": delivery_count,
            "started_at": now,
            "ended_at": None,
            "outcome": None,
            "error": None,
            "checkpoint": None,
        }
    )
    set_status(record, JobStatus.RUNNING)
    return len(attempts), closed


def mark_killed(record: dict[str, Any], number: int) -> None:
    """Note that attempt ``number`` was killed by its node: the next attempt counts it as a failure."""
    for entry in record["attempts"]:
        if entry["number"] == number:
            entry["killed"] = "uncounted"


def end_attempt(
    record: dict[str, Any],
    number: int,
    *,
    outcome: str,
    error: str | None,
    now: float,
    checkpoint: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    artifacts: dict[str, str] | None = None,
) -> None:
    """Close attempt ``number`` (if still open) and keep its checkpoint, progress and artifact pointers."""
    for entry in record["attempts"]:
        if entry["number"] == number and entry["outcome"] is None:
            entry.update(outcome=outcome, ended_at=now, error=error, checkpoint=checkpoint)
    if checkpoint is not None:
        record["checkpoint"] = checkpoint
    if progress is not None:
        record["progress"] = progress
    if artifacts:
        record["artifacts"].update(artifacts)
