"""Reading and conditionally updating job records in storage (the record's shape: ``node.contract.record``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..contract import exact_json
from ..contract.record import new_record, record_key, record_problem
from ..errors import CorruptRecord, PreconditionFailed
from .base import Storage

logger = logging.getLogger(__name__)

#: orjson (not the standard library's ``json``): a short job writes one record, and its encoding was ~15 % of the
#: node middleware's work per job (orjson: ~7x less; and ~4x less to decode one).
_OPTIONS = orjson.OPT_NON_STR_KEYS  # like ``json.dumps``: integer keys become strings


def _compact(value: Any) -> bytes:
    """A record as compact JSON. Unlike ``json.dumps``, NaN and infinities become ``null``; what orjson cannot
    encode (an integer beyond 64 bits) goes through ``json``."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def _loads(data: bytes | str) -> Any:
    try:
        return exact_json.loads(data)  # (an integer beyond 64 bits in a result stays one)
    except ValueError:  # orjson refuses e.g. NaN, written by ``json`` (above, or by an earlier version)
        return json.loads(data)


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
        """The record and its etag, or ``(None, None)`` when the job has none yet.

        Raises:
            CorruptRecord: What is stored is not JSON, or not a job record's shape (never overwritten).
        """
        key = record_key(job_id)
        found = self.storage.get_if_exists(key)
        if found is None:
            return None, None
        try:
            record = _loads(found[0])
        except (ValueError, RecursionError) as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
            raise CorruptRecord(key, f"is not JSON ({str(e)[:200]})") from None
        problem = record_problem(record, job_id)
        if problem is not None:
            raise CorruptRecord(key, f"is unusable: {problem}")
        return record, found[1].etag

    def create(self, record: dict[str, Any]) -> bool:
        """Store ``record`` (a ``new_record`` filled in) unless the job already has one; ``False`` if it has."""
        record["updated_at"] = self.storage.now()
        body = _compact(record)
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
            if attempt == 0 and known is not None:
                record, etag = known
                shared = True  # ``known`` may be shared with its reader: mutate a copy
            else:
                record, etag = self.read(job_id)
                shared = False
            before = None
            if record is None:
                record = new_record(job_id, actor=actor, queue=queue)
                record.pop("updated_at", None)
            else:
                # Encoded once without its time stamp: that text tells whether the mutation changed anything,
                # and (decoded) is the private copy; the stamp is appended to the body, not encoded again.
                if shared:
                    record = {k: v for k, v in record.items() if k != "updated_at"}
                else:
                    record.pop("updated_at", None)
                before = _compact(record)
                if shared:
                    record = _loads(before)
            value = mutate(record)
            record.pop("updated_at", None)
            after = _compact(record)
            if after == before:
                return record, value  # nothing changed (e.g. a replayed begin): nothing to write
            record["updated_at"] = now = self.storage.now()
            body = after[:-1] + (b"," if after != b"{}" else b"") + b'"updated_at":' + orjson.dumps(now) + b"}"
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
