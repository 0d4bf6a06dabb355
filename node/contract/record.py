"""The job record (``records/<shard>/<job_id>.json``): its shape, one status enum, one owner of transitions.

Every function here is pure: it changes the record dict it is given, nothing else, so it can run again after
a conditional write lost a race (``node.storage.records.RecordStore`` retries them).

Attempts are identified by an ``attempt_id`` made by the node that runs them, so opening or closing one is
idempotent (a conditional PUT replayed after a lost response finds its own attempt already there). Only the
*newest* attempt may change what belongs to the job as a whole (status, checkpoint pointer, artifacts,
progress): an older attempt still running on a node believed lost is *fenced* and may only close its own entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum, StrEnum
from functools import lru_cache
from typing import Any

from ..errors import InvalidTransition

__all__ = [
    "FAILURE_OUTCOMES",
    "INTERRUPTION_OUTCOMES",
    "InvalidTransition",
    "JobStatus",
    "Outcome",
    "begin_attempt",
    "close_unexplained",
    "end_attempt",
    "new_record",
    "request_cancel",
    "cancel_requested",
    "record_key",
    "record_problem",
    "set_status",
    "status_of",
    "transition",
]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    QUARANTINED = "quarantined"
    CANCELLED = "cancelled"


_STATUSES: dict[str, JobStatus] = {status._value_: status for status in JobStatus}


class Outcome(Enum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the actor raised
    INVALID_INPUT = "invalid_input"  # the actor refused its arguments: never retried
    TIMED_OUT = "timed_out"  # exceeded its reservation (max_run_s), stopped or killed
    INTERRUPTED = "interrupted"  # preempted (SIGTERM) and handed back
    CRASHED = "crashed"  # its process died while its node lived on (seen by the same node)
    LOST = "lost"  # ended without a word and nobody saw why: a vanished or restarted node
    FENCED = "fenced"  # a newer attempt of the same job took over
    NOT_STARTED = "not_started"  # storage or broker trouble before the job could start (not counted)
    CANCELLED = "cancelled"  # stopped because its submitter cancelled it


#: Outcomes that spend the failure budget; interruptions are capped separately.
FAILURE_OUTCOMES = frozenset({Outcome.FAILED, Outcome.TIMED_OUT, Outcome.CRASHED})
INTERRUPTION_OUTCOMES = frozenset({Outcome.INTERRUPTED, Outcome.LOST})

_ALLOWED: dict[JobStatus | None, set[JobStatus]] = {
    # QUARANTINED: the router may quarantine a job that never got a record (e.g. a malformed message).
    None: {
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.EXPIRED,
        JobStatus.FAILED,
        JobStatus.SUCCEEDED,
        JobStatus.QUARANTINED,
        JobStatus.CANCELLED,  # cancelled before any node saw it
    },
    JobStatus.QUEUED: {
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.EXPIRED,
        JobStatus.FAILED,
        JobStatus.QUARANTINED,
        JobStatus.CANCELLED,
    },
    JobStatus.RUNNING: {
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.EXPIRED,
        JobStatus.CANCELLED,
    },
    # The router may re-dispatch a failed job, or quarantine it; its submitter may cancel it.
    JobStatus.FAILED: {
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.QUARANTINED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    },
    JobStatus.EXPIRED: {JobStatus.EXPIRED, JobStatus.QUARANTINED},
    # An operator may requeue a quarantined job, or cancel it.
    JobStatus.QUARANTINED: {JobStatus.QUEUED, JobStatus.QUARANTINED, JobStatus.CANCELLED},
    JobStatus.SUCCEEDED: {JobStatus.SUCCEEDED},
    JobStatus.CANCELLED: {JobStatus.CANCELLED},
}

#: Statuses after which a copy of the job's message must not start it again.
FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.EXPIRED, JobStatus.QUARANTINED, JobStatus.CANCELLED})
#: Statuses a submitter waits for: nothing more will happen to the job unless an operator acts.
SETTLED_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.QUARANTINED, JobStatus.CANCELLED}
)
#: The latest time (Unix seconds) a stored time may name and still be shown as a date (the year 10000).
LATEST_TIME = 253_402_300_800

#: A job's return value up to this size (JSON) is kept in its record; a larger one is artifact ``result.json``.
RESULT_INLINE_MAX = 16 * 1024


def transition(current: JobStatus | None, new: JobStatus) -> JobStatus:
    """Return ``new`` if a job may go from ``current`` to it, else raise ``InvalidTransition``."""
    if new not in _ALLOWED[current]:
        raise InvalidTransition(f"job status cannot go from {current.value if current else 'none'} to {new.value}")
    return new


@lru_cache(maxsize=1024)  # a job's key is asked for at its arrival and again at its end
def record_key(job_id: str) -> str:
    """Where a job's record lives: 256 shards by hash, not a folder per job (on a local filesystem a new
    directory per job doubled the cost of a short job's one record write; checkpoints and artifacts, which
    only longer jobs have, stay under ``jobs/<job_id>/``)."""
    shard = hashlib.blake2b(job_id.encode("utf-8", "surrogatepass"), digest_size=1).hexdigest()
    return f"records/{shard}/{job_id}.json"


_OUTCOMES = frozenset(outcome.value for outcome in Outcome)
_OBJECT_OR_NULL = ("checkpoint", "progress", "cancel", "result")


def record_problem(record: Any, job_id: str) -> str | None:
    """What makes ``record`` (decoded from job ``job_id``'s record file) unusable as a job record, or ``None``.

    Only what the node and the router rely on is checked: a record written by hand or truncated must end as a
    clear error naming it, not as a ``KeyError`` deep inside an attempt, re-offered forever."""
    if not isinstance(record, dict):
        return f"it is a JSON {type(record).__name__}, not an object"
    if record.get("job_id", job_id) != job_id:
        return f"its job_id is {str(record['job_id'])[:80]!r}, not {job_id!r}"
    status = record.get("status")
    if status is not None and (not isinstance(status, str) or status not in _STATUSES):
        return f"status {str(status)[:80]!r} is unknown"
    attempts = record.get("attempts")
    if not isinstance(attempts, list):
        return f"attempts must be a list, got {type(attempts).__name__}"
    for n, entry in enumerate(attempts):
        if not isinstance(entry, dict):
            return f"attempts[{n}] must be an object, got {type(entry).__name__}"
        number = entry.get("number")
        if type(number) is not int:  # (not a bool either)
            return f"attempts[{n}].number must be an integer, got {type(number).__name__}"
        outcome = entry.get("outcome")
        if outcome is not None and (not isinstance(outcome, str) or outcome not in _OUTCOMES):
            return f"attempts[{n}].outcome {str(outcome)[:80]!r} is unknown"
    artifacts = record.get("artifacts", {})
    if not isinstance(artifacts, dict) or not all(isinstance(v, str) for v in artifacts.values()):
        return "artifacts must be an object of storage keys"
    for name in _OBJECT_OR_NULL:
        value = record.get(name)
        if value is not None and not isinstance(value, dict):
            return f"{name} must be an object or null, got {type(value).__name__}"
    if not isinstance(record.get("routing", []), list):
        return f"routing must be a list, got {type(record['routing']).__name__}"
    return None


def new_record(job_id: str, *, actor: str = "", queue: str = "") -> dict[str, Any]:
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


def request_cancel(record: dict[str, Any], *, now: float, by: str = "") -> JobStatus | None:
    """Cancel the job: a job no node runs becomes *cancelled* now; a running one is asked to stop (its node
    sees ``record["cancel"]`` and ends it *cancelled*). Returns the status the job is left in, or ``None``
    when it is running and must stop; a job already succeeded, failed for good or expired is left alone.
    """
    status = status_of(record)
    if status in (JobStatus.SUCCEEDED, JobStatus.EXPIRED, JobStatus.CANCELLED):
        return status
    record.setdefault("cancel", None)
    if record["cancel"] is None:
        record["cancel"] = {"at": now, "by": by}
    if status is JobStatus.RUNNING:
        return None
    set_status(record, JobStatus.CANCELLED, reason="cancelled" + (f" by {by}" if by else ""))
    return JobStatus.CANCELLED


def cancel_requested(record: dict[str, Any] | None) -> bool:
    return bool(record and record.get("cancel"))


def status_of(record: dict[str, Any] | None) -> JobStatus | None:
    value = record.get("status") if record else None
    if not value:
        return None
    # A dict lookup: ``JobStatus(value)`` and ``member.value`` run enum's Python code, several calls per job.
    return _STATUSES.get(value) or JobStatus(value)  # (the constructor raises ValueError naming a bad one)


def set_status(record: dict[str, Any], new: JobStatus, *, reason: str | None = None) -> None:
    """The only way a record's status changes."""
    record["status"] = transition(status_of(record), new)._value_  # ``_value_``: a plain attribute (see status_of)
    if reason is not None:
        record["reason"] = reason


def _entry(record: dict[str, Any], attempt_id: str) -> dict[str, Any] | None:
    for entry in record["attempts"]:  # a loop, not next(genexpr): called a few times per job
        if entry.get("attempt_id") == attempt_id:
            return entry
    return None


def newest_attempt_id(record: dict[str, Any]) -> str | None:
    return record["attempts"][-1].get("attempt_id") if record["attempts"] else None


@dataclass(frozen=True)
class Closed:
    """An earlier attempt that ``close_unexplained`` closed, and how."""

    attempt_id: str
    outcome: Outcome


def close_unexplained(
    record: dict[str, Any],
    *,
    now: float,
    crashed_here: frozenset[str] = frozenset(),
    killed_here: frozenset[str] = frozenset(),
) -> list[Closed]:
    """Close every open attempt, each of which ended without a word, and say how each ended.

    An attempt killed for overrunning its reservation *timed out*; one the node's own journal saw die on
    this node (``crashed_here``) *crashed*; any other *lost* its node (an interruption, not the job's fault).
    """
    closed = []
    for entry in record["attempts"]:
        if entry["outcome"] is not None:
            continue
        if entry.get("killed") or entry.get("attempt_id") in killed_here:
            outcome, error = Outcome.TIMED_OUT, entry.get("killed") or "killed: overran max_run_s"
        elif entry.get("attempt_id") in crashed_here:
            outcome, error = Outcome.CRASHED, "its process died on this node"
        else:
            outcome, error = Outcome.LOST, "ended without a word (its node vanished or restarted)"
        entry.update(outcome=outcome.value, ended_at=now, error=error)
        closed.append(Closed(entry.get("attempt_id", ""), outcome))
    return closed


def begin_attempt(record: dict[str, Any], attempt: dict[str, Any]) -> int:
    """Open ``attempt`` (a dict with at least ``attempt_id``, ``node``, ``started_at``); returns its number.

    Idempotent: an attempt already present is left as it is. The status becomes *running* (raises
    ``InvalidTransition`` when the record is final).
    """
    existing = _entry(record, attempt["attempt_id"])
    if existing is not None:
        return existing["number"]
    set_status(record, JobStatus.RUNNING)
    number = max((a["number"] for a in record["attempts"]), default=0) + 1
    record["attempts"].append(
        {"number": number, "ended_at": None, "outcome": None, "error": None, "checkpoint": None, **attempt}
    )
    return number


def end_attempt(
    record: dict[str, Any],
    attempt_id: str,
    *,
    outcome: Outcome,
    error: str | None,
    now: float,
    status: JobStatus | None = None,
    reason: str | None = None,
    checkpoint: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    artifacts: dict[str, str] | None = None,
    result: dict[str, Any] | None = None,
    entry_if_missing: dict[str, Any] | None = None,
) -> bool:
    """Close attempt ``attempt_id`` and, if it is the newest attempt, apply what it means for the job.

    ``entry_if_missing`` opens the attempt first when it was never written (a short job records itself only
    at its end). Returns ``False`` when the attempt is *fenced* (a newer attempt exists): only its own entry
    was closed, and the job's status, checkpoint, progress and artifacts were left to the newer attempt.
    ``result`` is the job's return value as the record keeps it (``{"value": …}`` or ``{"artifact": name}``).
    """
    entry = _entry(record, attempt_id)
    if entry is None and entry_if_missing is not None:
        if status_of(record) in FINAL_STATUSES:
            return False
        begin_attempt(record, {**entry_if_missing, "attempt_id": attempt_id})
        entry = _entry(record, attempt_id)
    if entry is None:
        return False
    if newest_attempt_id(record) != attempt_id:
        if entry["outcome"] is None:
            superseded = f"superseded by attempt {record['attempts'][-1]['number']} (it ended {outcome.value})"
            entry.update(outcome=Outcome.FENCED.value, ended_at=now, error=superseded, checkpoint=checkpoint)
        return False
    if entry["outcome"] is None:
        entry.update(outcome=outcome._value_, ended_at=now, error=error, checkpoint=checkpoint)
    if checkpoint is not None:
        record["checkpoint"] = checkpoint
    if progress is not None:
        record["progress"] = progress
    if artifacts:
        record.setdefault("artifacts", {}).update(artifacts)
    if result is not None:
        record["result"] = result
    if status is not None:
        set_status(record, status, reason=reason)
    return True


def succeeded_record(
    job_id: str,
    entry: dict[str, Any],
    *,
    actor: str,
    queue: str,
    now: float,
    reason: str | None,
    progress: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a job that had none and whose first recorded attempt (``entry``, as for
    ``begin_attempt``) succeeded without a checkpoint or artifacts: what ``end_attempt`` makes of
    ``new_record`` with ``entry_if_missing``, built in one step for a short job's one record write
    (``tests/node/test_job_record.py`` pins the two equal). ``updated_at`` is left to the writer."""
    attempt = {"number": 1, "ended_at": now, "outcome": Outcome.SUCCEEDED._value_, "error": None, "checkpoint": None}
    attempt.update(entry)
    record = {
        "job_id": job_id,
        "actor": actor,
        "queue": queue,
        "status": JobStatus.SUCCEEDED._value_,
        "attempts": [attempt],
        "checkpoint": None,
        "artifacts": {},
        "progress": progress,
        "reason": reason,
    }
    if result is not None:
        record["result"] = result
    return record


def release_attempt(record: dict[str, Any], attempt_id: str, *, now: float, renew_every_s: float) -> bool:
    """Note that attempt ``attempt_id`` acked its delivery early and renews a lease instead
    (``node.attempt.lease``); ``False`` when it is no longer the job's open, newest attempt."""
    entry = _entry(record, attempt_id)
    if entry is None or entry["outcome"] is not None or newest_attempt_id(record) != attempt_id:
        return False
    entry.setdefault("released_at", now)
    entry.setdefault("renewals", 0)
    entry["lease_renew_s"] = renew_every_s
    return True


def renew_lease(record: dict[str, Any], attempt_id: str, *, now: float) -> bool:
    """Count one renewal of attempt ``attempt_id``'s lease; ``False`` when it is no longer the job's open,
    newest attempt (a lease check declared it lost, or a newer attempt runs): it must stop."""
    entry = _entry(record, attempt_id)
    if entry is None or entry["outcome"] is not None or newest_attempt_id(record) != attempt_id:
        return False
    entry["renewals"] = int(entry.get("renewals", 0)) + 1
    entry["renewed_at"] = now
    return True


def mark_killed(record: dict[str, Any], attempt_id: str, error: str) -> None:
    """Note that ``attempt_id`` is being killed for overrunning its reservation (the next attempt closes it)."""
    entry = _entry(record, attempt_id)
    if entry is not None and entry["outcome"] is None:
        entry["killed"] = error
