"""Job records: one owner of status transitions; concurrent updates never lose each other."""

from __future__ import annotations

import threading

import pytest

from node.job_record import InvalidTransition, JobStatus, RecordStore, set_status, transition


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
    from node.storage import open_storage

    if backend == "file":
        storage = open_storage((tmp_path / "s").as_uri())
    else:
        storage = open_storage(
            f"s3://{request.getfixturevalue('s3_bucket')}", endpoint_url=request.getfixturevalue("s3_endpoint")
        )
    records = RecordStore(storage)

    def add_attempts(worker: int) -> None:
        for n in range(5):
            records.update("job", lambda r, n=n: r["attempts"].append({"worker": worker, "n": n}))

    threads = [threading.Thread(target=add_attempts, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = records.get("job")
    assert sorted((a["worker"], a["n"]) for a in record["attempts"]) == [(w, n) for w in range(4) for n in range(5)]


def test_set_status_is_the_only_door(tmp_path):
    from node.storage import LocalStorage

    records = RecordStore(LocalStorage(tmp_path))
    records.update("j", lambda r: set_status(r, JobStatus.RUNNING))
    records.update("j", lambda r: set_status(r, JobStatus.SUCCEEDED))
    with pytest.raises(InvalidTransition):
        records.update("j", lambda r: set_status(r, JobStatus.RUNNING))
    assert records.get("j")["status"] == "succeeded"


def test_begin_attempt_closes_an_attempt_that_died_without_a_word():
    from node.job_record import begin_attempt, end_attempt, new_record
    from node.policy import Outcome

    record = new_record("j", actor="a", queue="q")
    meta = {"slot": "cpu-0", "pid": 1, "message_id": "m", "delivery_count": 0}
    assert begin_attempt(record, node="n1", now=1.0, **meta) == (1, None)
    # the process died on n1; n1 sees the job again: a crash (a failure)
    assert begin_attempt(record, node="n1", now=2.0, **meta) == (2, Outcome.CRASHED)
    # n1 vanished; n2 sees it: lost (an interruption)
    assert begin_attempt(record, node="n2", now=3.0, **meta) == (3, Outcome.LOST)
    end_attempt(record, 3, outcome="succeeded", error=None, now=4.0, artifacts={"r": "jobs/j/artifacts/r"})
    set_status(record, JobStatus.SUCCEEDED)
    assert [a["outcome"] for a in record["attempts"]] == ["crashed", "lost", "succeeded"]
    assert record["artifacts"] == {"r": "jobs/j/artifacts/r"}
    # a succeeded job starts no new attempt
    assert begin_attempt(record, node="n2", now=5.0, **meta) is None


def test_running_progress_reaches_the_record(tmp_path):
    from node.checkpoints import Checkpointer
    from node.job import JobContext
    from node.job_options import JobOptions
    from node.progress import ProgressReporter
    from node.storage import LocalStorage
    from tests.conftest import wait_for

    storage = LocalStorage(tmp_path)
    records = RecordStore(storage)
    context = JobContext(
        options=JobOptions(job_id="p"), attempt=1, checkpoint=Checkpointer(storage, "p", 1), artifacts=None
    )
    reporter = ProgressReporter(records, context, every_s=0.05)
    reporter.start()
    context.progress(0.25, "warming up")
    wait_for(lambda: (records.get("p") or {}).get("progress"), 5, "progress in the record")
    context.progress(0.5)
    wait_for(lambda: records.get("p")["progress"]["fraction"] == 0.5, 5, "newer progress")
    reporter.stop()
    assert records.get("p")["progress"]["fraction"] == 0.5


def test_an_attempt_killed_for_overrunning_is_counted_once_by_the_next():
    from node.job_record import begin_attempt, end_attempt, mark_killed, new_record
    from node.policy import Outcome

    record = new_record("j", actor="a", queue="q")
    meta = {"node": "n", "slot": "cpu-0", "pid": 1, "message_id": "m", "delivery_count": 0}
    begin_attempt(record, now=1.0, **meta)
    end_attempt(record, 1, outcome="timed_out", error="killed: …", now=2.0)
    mark_killed(record, 1)
    assert begin_attempt(record, now=3.0, **meta) == (2, Outcome.TIMED_OUT)
    end_attempt(record, 2, outcome="failed", error="x", now=4.0)
    assert begin_attempt(record, now=5.0, **meta) == (3, None)  # counted once only
