"""Reading and conditionally updating job records in storage (the record's shape: ``node.contract.record``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..contract.record import new_record, record_key
from ..errors import ObjectNotFound, PreconditionFailed
from .base import Storage

logger = logging.getLogger(__name__)


class RecordStore:
    """Reads and updates job records.

    Every change is a read-modify-write guarded by a conditional write (``if_match`` / ``if_none_match``),
    retried on conflict, so concurrent writers (two nodes, a node and the router) never lose an update.

    Parameters:
        storage: Where records live.
        conflicts: How many lost races to retry before giving up.
    """

    def __init__(self, storage: Storage, *, conflicts: int = 50) -> None:
        self.storage = storage
        self.conflicts = conflicts

    def read(self, job_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """The record and its etag, or ``(None, None)`` when the job has none yet."""
        try:
            data, info = self.storage.get(record_key(job_id))
        except ObjectNotFound:
            return None, None
        return json.loads(data), info.etag

    def _read_private(self, job_id: str, known: tuple[dict[str, Any] | None, str | None] | None):
        if known is None:
            return self.read(job_id)
        record, etag = known
        # ``known`` may be shared with its reader: mutate a copy (records are small JSON documents).
        return (json.loads(json.dumps(record)) if record is not None else None), etag

    def create(self, record: dict[str, Any]) -> bool:
        """Store ``record`` (a ``new_record`` filled in) unless the job already has one; ``False`` if it has."""
        record["updated_at"] = time.time()
        body = json.dumps(record, separators=(",", ":")).encode()
        try:
            self.storage.put(record_key(record["job_id"]), body, if_none_match=True)
        except PreconditionFailed:
            return False
        return True

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.read(job_id)[0]

    def update(
        self,
        job_id: str,
        mutate: Callable[[dict[str, Any]], Any],
        *,
        actor: str = "",
        queue: str = "",
        known: tuple[dict[str, Any] | None, str | None] | None = None,
    ) -> tuple[dict[str, Any], Any]:
        """Apply ``mutate`` to the record (created if absent) and store it; returns (record, mutate's value).

        ``mutate`` may run more than once (after a conflict) and must only change the record it is given; a
        mutation that changes nothing writes nothing. ``known`` (a record and etag read earlier) saves the
        first read when nobody wrote in between.
        """
        key = record_key(job_id)
        for attempt in range(self.conflicts):
            record, etag = self._read_private(job_id, known if attempt == 0 else None)
            if record is None:
                record = new_record(job_id, actor=actor, queue=queue)
            before = json.dumps(record, separators=(",", ":")) if etag is not None else None
            value = mutate(record)
            if before is not None and json.dumps(record, separators=(",", ":")) == before:
                return record, value  # nothing changed (e.g. a replayed begin): nothing to write
            record["updated_at"] = time.time()
            body = json.dumps(record, separators=(",", ":")).encode()
            try:
                if etag is None:
                    self.storage.put(key, body, if_none_match=True)
                else:
                    self.storage.put(key, body, if_match=etag)
                return record, value
            except PreconditionFailed:
                logger.debug("Record %s changed under us (try %d); re-reading.", job_id, attempt + 1)
                time.sleep(min(0.2, 0.005 * 2**attempt))
        raise PreconditionFailed(f"could not update {key} after {self.conflicts} conflicting writes")
