"""The quarantine: jobs the router could not place, each kept whole with its history, in storage.

Storage rather than a queue because an operator must be able to *list* it: a quorum queue has no peek, and
reading a queue by taking messages and putting them back reorders them and spends their delivery counts.
An object store lists without touching anything. One entry per job (``quarantine/<job id>.json``; dead
letters too unreadable to have a job id use their message id, or a hash of the body); writing one again is
harmless, so the router may repeat it after a crash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from node.contract.job_options import JOB_ID_PATTERN, OPTION_KEY
from node.contract.record import LATEST_TIME
from node.errors import ObjectNotFound
from node.storage import Storage

PREFIX = "quarantine/"


def entry_id(job_id: str | None, message_id: str | None, body: bytes) -> str:
    """The quarantine id: the job id, else the message id (if usable as a key), else ``dl-<hash of the body>``."""
    for candidate in (job_id, message_id):
        if isinstance(candidate, str) and JOB_ID_PATTERN.fullmatch(candidate):
            return candidate
    return "dl-" + hashlib.blake2b(body, digest_size=12).hexdigest()


def job_of(message: Any) -> tuple[dict[str, Any], str | None]:
    """The job options a message's fields (a decoded body, perhaps malformed) carry, and its job id: the
    options' ``job_id``, else the message id (as for a message sent without job options); ``({}, None)``
    when there is none of either."""
    fields = message if isinstance(message, dict) else {}
    options = fields.get("options")
    job = options.get(OPTION_KEY) if isinstance(options, dict) else None
    job = job if isinstance(job, dict) else {}
    job_id = job.get("job_id") or fields.get("message_id")
    return job, job_id if isinstance(job_id, str) else None


_OPTIONAL = {"job_id": str, "actor": str, "queue": str, "message": dict, "raw": str, "error": str, "node": str}


def entry_problem(entry: Any, entry_id: str) -> str | None:
    """What makes ``entry`` (decoded from ``quarantine/<entry_id>.json``) unusable, or ``None``: only what
    the operator commands rely on is checked."""
    if not isinstance(entry, dict):
        return f"it is a JSON {type(entry).__name__}, not an object"
    if entry.get("id") != entry_id:
        return f"its id is {str(entry.get('id'))[:80]!r}, not {entry_id!r}"
    if not isinstance(entry.get("reason"), str):
        return f"reason must be a string, got {type(entry.get('reason')).__name__}"
    when = entry.get("quarantined_at")
    if when is not None and (type(when) not in (int, float) or not 0 <= when < LATEST_TIME):
        return f"quarantined_at must be a time (Unix seconds), got {str(when)[:40]!r}"
    for name, kind in _OPTIONAL.items():
        if entry.get(name) is not None and not isinstance(entry[name], kind):
            return f"{name} must be a {kind.__name__}, got {type(entry[name]).__name__}"
    for name in ("attempts", "routing"):
        items = entry.get(name) or []
        if not isinstance(items, list):
            return f"{name} must be a list, got {type(items).__name__}"
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                return f"{name}[{n}] must be an object, got {type(item).__name__}"
    return None


class Quarantine:
    """Quarantine entries in storage. An entry is a JSON object with at least ``id``, ``reason``,
    ``quarantined_at``, ``queue``, ``actor``, ``message`` (the job's message, or the raw body as text) and
    ``history`` (attempts and routing decisions)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @staticmethod
    def key(entry_id: str) -> str:
        return f"{PREFIX}{entry_id}.json"

    def put(self, entry: dict[str, Any]) -> None:
        self.storage.put(self.key(entry["id"]), json.dumps(entry, separators=(",", ":"), default=str).encode())

    def get(self, entry_id: str) -> dict[str, Any] | None:
        """The entry, or ``None``. A damaged one (a hand edit, a foreign tool) comes back as a stand-in that
        says so — ``unreadable: True``, no job, its problem as the reason — so it can be listed, shown and
        purged, and nothing requeues it."""
        key = self.key(entry_id)
        try:
            data, _ = self.storage.get(key)
        except ObjectNotFound:
            return None
        try:
            entry = json.loads(data)
        except (ValueError, RecursionError) as e:
            problem: str | None = f"is not JSON ({str(e)[:200]})"
        else:
            problem = entry_problem(entry, entry_id)
        if problem is None:
            return entry
        return {
            "id": entry_id,
            "job_id": None,
            "unreadable": True,
            "reason": f"unreadable: quarantine entry {key} {problem}",
            "quarantined_at": None,
        }

    def delete(self, entry_id: str) -> None:
        self.storage.delete(self.key(entry_id))

    def ids(self) -> Iterator[str]:
        for key in self.storage.list(PREFIX):
            if key.endswith(".json"):
                yield key[len(PREFIX) : -len(".json")]

    def entries(self) -> Iterator[dict[str, Any]]:
        for entry_id in self.ids():
            entry = self.get(entry_id)
            if entry is not None:
                yield entry
