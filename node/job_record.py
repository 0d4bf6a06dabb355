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
