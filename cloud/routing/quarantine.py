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

from node.contract.job_options import JOB_ID_PATTERN
from node.errors import ObjectNotFound
from node.storage import Storage

PREFIX = "quarantine/"


def entry_id(job_id: str | None, message_id: str | None, body: bytes) -> str:
    """The quarantine id: the job id, else the message id (if usable as a key), else ``dl-<hash of the body>``."""
    for candidate in (job_id, message_id):
        if isinstance(candidate, str) and JOB_ID_PATTERN.fullmatch(candidate):
            return candidate
    return "dl-" + hashlib.blake2b(body, digest_size=12).hexdigest()


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
        try:
            data, _ = self.storage.get(self.key(entry_id))
        except ObjectNotFound:
            return None
        return json.loads(data)

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
