"""Fault injection: storage down at the worst moment, a replayed write, two live attempts, a drain, corrupt
records."""

from __future__ import annotations

import json

import pika
import pytest
from dramatiq import Message

from node.attempt.checkpoints import manifest_key
from node.contract.queues import death_reason
from node.contract.record import begin_attempt, record_key
from node.storage import open_storage
from node.storage.records import RecordStore
from tests.conftest import job_message, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def runs(storage, job_key: str) -> list[dict]:
    return [json.loads(storage.get(k)[0]) for k in storage.list(f"runs/{job_key}/")]


@pytest.mark.slow
def test_storage_down_while_the_success_is_recorded_loses_nothing_and_runs_nothing_twice(
    broker, start_node, restartable_s3, tmp_path
):
    # Given a node whose storage is an S3 endpoint, giving an ending attempt 2 s to record itself
    storage = restartable_s3.storage()
    node = start_node("--processes", "1", env=restartable_s3.node_env(BURROW_END_BUDGET_S="2"))
    cue = tmp_path / "finish"
    broker.enqueue(job_message("tests", "waits_for_file", "late-record", job_key="late-record", path=str(cue)))
    wait_for(lambda: list(storage.list("jobs/late-record/artifacts/")), 60, "the job's result to be stored")

    # When storage goes away just as the job finishes, and comes back after the node gave up recording
    restartable_s3.stop()
    cue.touch()
    wait_for(lambda: "Could not record the end of job late-record" in node.output(), 60, "the failed record")
    restartable_s3.start()

    # Then the success is recorded by a later delivery, without running the job again
    record = wait_for(
        lambda: (r := RecordStore(storage).get("late-record")) and r["status"] == "succeeded" and r,
        60,
        "the success to be recorded",
    )
    assert [a["outcome"] for a in record["attempts"]] == ["succeeded"]
    assert len(runs(storage, "late-record")) == 1
    assert json.loads(storage.get(record["artifacts"]["done.json"])[0]) == {"job_key": "late-record"}
    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 0), 60, "an empty queue")


class ReplayingStorage:
    """Sends every conditional PUT twice, as botocore does when the first response is lost."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.replays = 0

    def put(self, key, data, **conditions):
        self.inner.put(key, data, **conditions)
        if conditions:
            self.replays += 1
            return self.inner.put(key, data, **conditions)  # the replay: 412, the first one won
        return None

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_replayed_conditional_put_does_not_close_the_attempt_it_opened(s3_bucket, s3_endpoint):
    # Given a record store whose conditional writes are each replayed after they succeeded
    storage = ReplayingStorage(open_storage(f"s3://{s3_bucket}", endpoint_url=s3_endpoint))
    records = RecordStore(storage)

    # When an attempt begins (and a second one after it)
    records.update("j", lambda r: begin_attempt(r, {"attempt_id": "a1", "node": "n", "started_at": 1.0}))
    records.update("j", lambda r: begin_attempt(r, {"attempt_id": "a2", "node": "n", "started_at": 2.0}))

    # Then each replay found its own attempt already there: two attempts, both still open
    assert storage.replays == 2
    assert [(a["attempt_id"], a["outcome"]) for a in records.get("j")["attempts"]] == [("a1", None), ("a2", None)]


@pytest.mark.slow
def test_two_live_attempts_end_as_the_newer_one_left_them(broker, storage, start_node, tmp_path):
    # Given two nodes, and two copies of one job (a node believed lost still runs the older attempt)
    for name in ("node-a", "node-b"):
        start_node("--processes", "1", env={"BURROW_NODE_ID": name, "BURROW_STATE_DIR": str(tmp_path / name)})
    for _ in range(2):
        broker.enqueue(job_message("tests", "twin", "twin", job_key="twin"))

    # When the newer attempt succeeds first and the older one finishes after it
    wait_for(lambda: len(runs(storage, "twin")) == 2, 60, "both attempts to run")
    record = wait_for(
        lambda: (r := RecordStore(storage).get("twin")) and all(a["outcome"] for a in r["attempts"]) and r,
        60,
        "both attempts to end",
    )
    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 0), 60, "both copies acked")

    # Then the job is the newer attempt's: its status, its artifacts; the older attempt only closed its entry
    assert record["status"] == "succeeded"
    assert [a["outcome"] for a in record["attempts"]] == ["fenced", "succeeded"]
    assert json.loads(storage.get(record["artifacts"]["result.json"])[0]) == {"attempt": 2}
    # and nothing was sent on by the stale attempt
    assert broker.get_queue_message_counts("failed-jobs") == (0, 0, 0)
    assert len(runs(storage, "twin")) == 2


@pytest.mark.slow
def test_a_drained_node_hands_each_job_back_once_and_takes_nothing_back(
    amqp_url, broker, queue_prefix, storage, start_node
):
    # Given a two-worker node running two long jobs
    node = start_node()
    for job_id in ("long-1", "long-2"):
        broker.enqueue(job_message("training", "train_until_stopped", job_id, seed=1))
    records = RecordStore(storage)
    for job_id in ("long-1", "long-2"):
        wait_for(lambda job_id=job_id: (records.get(job_id) or {}).get("attempts"), 60, f"{job_id} to run")

    # When the node is told to stop
    assert node.stop(timeout_s=60) == 0

    # Then each job was interrupted exactly once: handed back, and not taken again by a draining worker
    for job_id in ("long-1", "long-2"):
        assert [a["outcome"] for a in records.get(job_id)["attempts"]] == ["interrupted"]
    wait_for(lambda: broker.get_queue_message_counts("training")[0] == 2, 60, "both jobs back in their queue")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    waiting = []
    for _ in range(2):
        method, properties, body = channel.basic_get(queue_prefix + "training")
        assert method is not None
        waiting.append((Message.decode(body).options["job"], (properties.headers or {}).get("x-delivery-count", 0)))
    connection.close()
    assert sorted(job["job_id"] for job, _ in waiting) == ["long-1", "long-2"]
    assert [(job["interruptions"], count) for job, count in waiting] == [(1, 0), (1, 0)]
    assert "Traceback" not in node.output()


#: Records a hand edit or a truncated write of some other tool could leave: (job id, stored body).
CORRUPT_RECORDS = [
    ("torn", b'{"job_id": "torn", "attempts": [{"num'),
    ("listed", b"[]"),
    ("misshapen", b'{"job_id": "misshapen", "status": "running", "attempts": 3, "artifacts": {}}'),
]


def test_a_job_whose_record_is_corrupt_is_dead_lettered_once_naming_the_record(
    amqp_url, broker, queue_prefix, storage, start_node
):
    # Given jobs whose records are corrupt, and a good job behind them, for a one-worker node
    for job_id, body in CORRUPT_RECORDS:
        storage.put(record_key(job_id), body)
        broker.enqueue(job_message("tests", "counted", job_id, job_key=job_id))
    broker.enqueue(job_message("tests", "counted", "fine", job_key="fine"))

    # When the node takes them
    node = start_node("--processes", "1")

    # Then the good job succeeds, and each corrupt one is dead-lettered once as malformed, naming its record
    wait_for(lambda: (RecordStore(storage).get("fine") or {}).get("status") == "succeeded", 60, "the good job")
    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 3), 60, "three dead letters")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    details = {}
    while (got := channel.basic_get(queue_prefix + "tests.XQ", auto_ack=True))[0] is not None:
        method, properties, body = got
        assert death_reason(properties.headers) == "malformed"
        details[Message.decode(body).options["job"]["job_id"]] = properties.headers["x-burrow-detail"]
    connection.close()
    assert sorted(details) == sorted(job_id for job_id, _ in CORRUPT_RECORDS)
    for job_id, detail in details.items():
        assert detail.startswith(f"record: job record {record_key(job_id)} "), detail
    assert "is not JSON" in details["torn"] and "attempts must be a list" in details["misshapen"]
    # and none of them ran, was offered again, or had its record overwritten
    assert runs(storage, "fine") and not any(runs(storage, job_id) for job_id, _ in CORRUPT_RECORDS)
    assert "could not start" not in node.output()
    assert all(storage.get(record_key(job_id))[0] == body for job_id, body in CORRUPT_RECORDS)


def test_a_job_whose_checkpoint_is_corrupt_is_dead_lettered_once_naming_it(
    amqp_url, broker, queue_prefix, storage, start_node
):
    # Given a job whose checkpoint manifest was damaged, for a one-worker node
    storage.put(manifest_key("resumes"), b'{"attempt": 1, "se')
    broker.enqueue(job_message("training", "train_until_stopped", "resumes", seed=1))

    # When the node runs it (its actor loads its checkpoint first)
    start_node("--processes", "1")

    # Then it is dead-lettered once as malformed, naming the manifest, after one attempt: not retried
    wait_for(lambda: broker.get_queue_message_counts("training") == (0, 0, 1), 60, "one dead letter")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    method, properties, body = connection.channel().basic_get(queue_prefix + "training.XQ", auto_ack=True)
    connection.close()
    assert death_reason(properties.headers) == "malformed"
    assert properties.headers["x-burrow-detail"].startswith(f"invalid input: checkpoint {manifest_key('resumes')} ")
    record = RecordStore(storage).get("resumes")
    assert record["status"] == "failed" and [a["outcome"] for a in record["attempts"]] == ["invalid_input"]
