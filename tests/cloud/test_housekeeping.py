"""The router's sweep closes the attempts a vanished node left open (pure unit tests: local storage)."""

from __future__ import annotations

from cloud.routing.housekeeping import Housekeeping
from node.contract.record import begin_attempt, record_key
from node.storage import LocalStorage
from node.storage.records import RecordStore
from tests.cloud.test_router_take import SilentRegistry


def test_a_corrupt_record_does_not_stop_the_sweep_closing_the_other_jobs_of_a_vanished_node(tmp_path):
    now = 1_000_000.0
    storage = LocalStorage(tmp_path)
    records = RecordStore(storage)
    storage.put(record_key("torn"), b'{"job_id": garbage')
    for job_id in ("before", "after"):
        records.update(job_id, lambda r: begin_attempt(r, {"attempt_id": "a1", "node": "node-a", "started_at": 1.0}))
    sweep = Housekeeping(
        registry=SilentRegistry(now, node="node-a", running=("before", "torn", "after")),
        records=records,
        queues=None,
        clock=lambda: now,
    )

    sweep.sweep()  # raises nothing

    for job_id in ("before", "after"):
        record = records.get(job_id)
        assert record["status"] == "queued" and [a["outcome"] for a in record["attempts"]] == ["lost"]
    assert storage.get(record_key("torn"))[0] == b'{"job_id": garbage'
