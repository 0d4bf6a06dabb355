"""Job records: one owner of status transitions, idempotent and fenced attempts, no lost updates."""

from __future__ import annotations

import json
import math
import threading

import pytest

from node.contract.record import (
    InvalidTransition,
    JobStatus,
    Outcome,
    begin_attempt,
    close_unexplained,
    end_attempt,
    mark_killed,
    new_record,
    record_key,
    record_problem,
    set_status,
    succeeded_record,
    transition,
)
from node.errors import CorruptRecord
from node.storage import LocalStorage, open_storage
from node.storage.records import RecordStore


def test_allowed_and_forbidden_transitions():
    assert transition(None, JobStatus.RUNNING) is JobStatus.RUNNING
    assert transition(JobStatus.RUNNING, JobStatus.SUCCEEDED) is JobStatus.SUCCEEDED
    assert transition(JobStatus.FAILED, JobStatus.QUARANTINED) is JobStatus.QUARANTINED
    for new in (JobStatus.RUNNING, JobStatus.FAILED, JobStatus.QUEUED):
        with pytest.raises(InvalidTransition, match="from succeeded"):
            transition(JobStatus.SUCCEEDED, new)
    with pytest.raises(InvalidTransition):
        transition(JobStatus.EXPIRED, JobStatus.RUNNING)


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_concurrent_writers_never_lose_an_update(backend, tmp_path, request):
    if backend == "file":
        storage = open_storage((tmp_path / "s").as_uri())
    else:
        storage = open_storage(
            f"s3://{request.getfixturevalue('s3_bucket')}", endpoint_url=request.getfixturevalue("s3_endpoint")
        )
    records = RecordStore(storage)

    def add_attempts(worker: int) -> None:
        for n in range(5):
            records.update("job", lambda r, n=n: r["attempts"].append({"number": 1, "worker": worker, "n": n}))

    threads = [threading.Thread(target=add_attempts, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = records.get("job")
    assert sorted((a["worker"], a["n"]) for a in record["attempts"]) == [(w, n) for w in range(4) for n in range(5)]


def test_set_status_is_the_only_door(tmp_path):
    records = RecordStore(LocalStorage(tmp_path))
    records.update("j", lambda r: set_status(r, JobStatus.RUNNING))
    records.update("j", lambda r: set_status(r, JobStatus.SUCCEEDED))
    with pytest.raises(InvalidTransition):
        records.update("j", lambda r: set_status(r, JobStatus.RUNNING))
    assert records.get("j")["status"] == "succeeded"


def attempt(attempt_id: str, node: str = "n1") -> dict:
    return {"attempt_id": attempt_id, "node": node, "started_at": 1.0}


def test_begin_is_idempotent_a_replayed_write_finds_its_own_attempt():
    record = new_record("j")
    assert begin_attempt(record, attempt("a1")) == 1
    assert begin_attempt(record, attempt("a1")) == 1  # the same begin again (a replayed conditional PUT)
    assert [a["attempt_id"] for a in record["attempts"]] == ["a1"] and record["attempts"][0]["outcome"] is None


def test_unexplained_ends_are_crashed_here_killed_or_lost():
    record = new_record("j")
    for attempt_id in ("a1", "a2", "a3"):
        begin_attempt(record, attempt(attempt_id))
    mark_killed(record, "a2", "killed: overran")
    closed = close_unexplained(record, now=5.0, crashed_here=frozenset({"a1"}))
    assert [(c.attempt_id, c.outcome) for c in closed] == [
        ("a1", Outcome.CRASHED),
        ("a2", Outcome.TIMED_OUT),
        ("a3", Outcome.LOST),
    ]
    assert all(a["ended_at"] == 5.0 for a in record["attempts"])


def test_a_stale_attempt_closes_only_its_own_entry():
    # Given attempt a1 (a node believed lost, still running) and a newer attempt a2
    record = new_record("j")
    begin_attempt(record, attempt("a1", "old"))
    begin_attempt(record, attempt("a2", "new"))
    record["checkpoint"] = {"key": "new-ckpt"}

    # When the stale attempt ends with success, a checkpoint and artifacts
    newest = end_attempt(
        record,
        "a1",
        outcome=Outcome.SUCCEEDED,
        error=None,
        now=3.0,
        status=JobStatus.SUCCEEDED,
        checkpoint={"key": "old-ckpt"},
        artifacts={"result.json": "jobs/j/artifacts/a1/result.json"},
    )

    # Then only its own entry changed: the job is still the newer attempt's
    assert newest is False
    assert record["status"] == "running" and record["checkpoint"] == {"key": "new-ckpt"}
    assert record["artifacts"] == {} and record["attempts"][0]["outcome"] == "fenced"
    assert "superseded by attempt 2" in record["attempts"][0]["error"]
    assert end_attempt(record, "a2", outcome=Outcome.SUCCEEDED, error=None, now=4.0, status=JobStatus.SUCCEEDED)
    assert record["status"] == "succeeded"


def test_a_short_attempt_records_itself_at_its_end():
    record = new_record("j")
    assert end_attempt(
        record, "a1", outcome=Outcome.SUCCEEDED, error=None, now=2.0, status=JobStatus.SUCCEEDED,
        entry_if_missing=attempt("a1"),
    )  # fmt: skip
    assert [(a["number"], a["outcome"]) for a in record["attempts"]] == [(1, "succeeded")]
    # and a copy arriving later cannot re-open a finished job
    assert not end_attempt(record, "a9", outcome=Outcome.FAILED, error="x", now=3.0, entry_if_missing=attempt("a9"))


def test_an_unchanged_record_is_not_rewritten(tmp_path):
    records = RecordStore(LocalStorage(tmp_path))
    records.update("j", lambda r: begin_attempt(r, attempt("a1")))
    _, etag = records.read("j")
    records.update("j", lambda r: begin_attempt(r, attempt("a1")))
    assert records.read("j")[1] == etag


def test_record_values_json_handles_oddly_are_kept_readable(tmp_path):
    # Records are encoded with orjson; what it cannot encode (an integer past 64 bits) goes through json.
    records = RecordStore(LocalStorage(tmp_path))
    records.update("odd", lambda record: record.update(progress={"big": 2**70, 3: "int key"}))
    assert records.get("odd")["progress"] == {"big": 2**70, "3": "int key"}
    records.update("odd", lambda record: record.update(progress={"loss": float("nan")}))
    assert records.get("odd")["progress"] == {"loss": None}  # NaN is not JSON: written as null
    # A record with NaN that an earlier version (json.dumps) wrote is still read.
    LocalStorage(tmp_path).put(record_key("old"), b'{"job_id":"old","attempts":[],"progress":{"loss":NaN}}')
    assert math.isnan(records.get("old")["progress"]["loss"])


@pytest.mark.parametrize("result", [None, {"value": [1, "two"]}])
def test_a_short_jobs_record_built_in_one_step_equals_the_general_one(result):
    # The record a short job creates at its end (``succeeded_record``) is exactly what the general path makes
    # of a job without a record: ``end_attempt`` with ``entry_if_missing`` on ``new_record``.
    entry = {"attempt_id": "a1", "node": "n", "instance": "i", "slot": "cpu-0", "pid": 7, "message_id": "m",
             "delivery_count": 0, "started_at": 100.0}  # fmt: skip
    general = new_record("job", actor="act", queue="q")
    general.pop("updated_at")
    end_attempt(general, "a1", outcome=Outcome.SUCCEEDED, error=None, now=101.5, status=JobStatus.SUCCEEDED,
                reason="done", progress={"step": 3}, result=result, entry_if_missing=entry)  # fmt: skip
    short = succeeded_record("job", entry, actor="act", queue="q", now=101.5, reason="done", progress={"step": 3},
                             result=result)  # fmt: skip
    assert short == general
    assert list(short) == list(general)  # the same field order, so the same bytes in storage
    assert short["attempts"][0] is not entry and list(short["attempts"][0]) == list(general["attempts"][0])


_GOOD = {"job_id": "j1", "status": "running", "attempts": [{"number": 1, "outcome": None}], "artifacts": {}}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"job_id": garbage', "is not JSON"),
        (b"", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        (b"[1, 2]", "it is a JSON list, not an object"),
        (json.dumps({**_GOOD, "job_id": "j2"}).encode(), "its job_id is 'j2'"),
        (json.dumps({**_GOOD, "status": "bogus"}).encode(), "status 'bogus' is unknown"),
        (json.dumps({**_GOOD, "status": {"a": 1}}).encode(), "status \"{'a': 1}\" is unknown"),
        (json.dumps({**_GOOD, "attempts": [{"number": 1, "outcome": []}]}).encode(), "attempts[0].outcome '[]'"),
        (json.dumps({k: v for k, v in _GOOD.items() if k != "attempts"}).encode(), "attempts must be a list"),
        (json.dumps({**_GOOD, "attempts": [5]}).encode(), "attempts[0] must be an object"),
        (json.dumps({**_GOOD, "attempts": [{"number": "1"}]}).encode(), "attempts[0].number must be an integer"),
        (json.dumps({**_GOOD, "attempts": [{"number": 1, "outcome": "?"}]}).encode(), "attempts[0].outcome '?'"),
        (json.dumps({**_GOOD, "artifacts": []}).encode(), "artifacts must be an object"),
        (json.dumps({**_GOOD, "checkpoint": "c"}).encode(), "checkpoint must be an object or null"),
        (json.dumps({**_GOOD, "routing": {}}).encode(), "routing must be a list"),
    ],
)
def test_a_corrupt_record_is_an_error_naming_it_and_is_never_overwritten(tmp_path, body, problem):
    storage = LocalStorage(tmp_path)
    storage.put(record_key("j1"), body)
    records = RecordStore(storage)
    for call in (lambda: records.read("j1"), lambda: records.update("j1", lambda r: r.update(progress={"n": 1}))):
        with pytest.raises(CorruptRecord) as error:
            call()
        assert error.value.key == record_key("j1")
        assert f"job record {record_key('j1')} " in str(error.value) and problem in str(error.value)
    assert storage.get(record_key("j1"))[0] == body


def test_every_record_the_node_writes_passes_the_shape_check():
    assert record_problem(new_record("j1"), "j1") is None
    entry = {"attempt_id": "a1", "node": "n", "started_at": 1.0}
    assert record_problem(succeeded_record("j1", entry, actor="a", queue="q", now=2.0, reason="ok"), "j1") is None
