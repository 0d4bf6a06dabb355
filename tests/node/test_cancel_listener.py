"""The cancel broadcast's receiving end (``node.middleware.cancel``), without a broker: a broadcast is a hint
checked against the record, never an order."""

from __future__ import annotations

import json

from node.attempt import running
from node.contract.record import JobStatus, request_cancel, set_status
from node.middleware import CancelListener
from node.storage import LocalStorage
from node.storage.records import RecordStore


class FakeContext:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.stopped: list[str] = []

    def request_stop(self, reason: str) -> None:
        self.stopped.append(reason)


def _running_record(records: RecordStore, job_id: str, *, cancelled: bool) -> None:
    def mutate(record):
        set_status(record, JobStatus.RUNNING)
        if cancelled:
            request_cancel(record, now=1.0, by="test")

    records.update(job_id, mutate)


def test_a_broadcast_stops_a_running_job_whose_record_says_cancelled_and_nothing_else(tmp_path):
    storage = LocalStorage(tmp_path)
    records = RecordStore(storage)
    listener = CancelListener(storage=storage)
    cancelled, other = FakeContext("cancelled-job"), FakeContext("forged-job")
    _running_record(records, "cancelled-job", cancelled=True)
    _running_record(records, "forged-job", cancelled=False)
    tokens = [running.enter(cancelled), running.enter(other)]
    try:
        for body in (
            json.dumps({"job_id": "cancelled-job"}).encode(),
            json.dumps({"job_id": "forged-job"}).encode(),  # nobody cancelled it: ignored
            json.dumps({"job_id": "not-here"}).encode(),
            b"not json",
            json.dumps({"job_id": 7}).encode(),
        ):
            listener._on_message(None, None, None, body)
    finally:
        running.leave(other, tokens[1])
        running.leave(cancelled, tokens[0])
    assert cancelled.stopped == ["cancelled"]
    assert other.stopped == []
