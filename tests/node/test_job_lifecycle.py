"""Acceptance: the job lifecycle against the real RabbitMQ, local storage and a real S3 endpoint."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pika
import pytest
from dramatiq import Message

from actors.training import fingerprint, initial_state, train_steps
from node.attempt.checkpoints import manifest_key
from node.contract.job_options import JobOptions
from node.contract.queues import death_reason
from node.storage.records import RecordStore
from tests.conftest import job_message, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

SEED, DIM = 11, 8


def expected_fingerprint(steps: int) -> str:
    return fingerprint(train_steps(initial_state(SEED, DIM), steps)["weights"])


def artifact(storage, job_id: str, name: str = "result.json") -> dict | None:
    """The job's artifact ``name`` as its record publishes it (artifacts are stored under their attempt)."""
    record = RecordStore(storage).get(job_id)
    key = (record or {}).get("artifacts", {}).get(name)
    return json.loads(storage.get(key)[0]) if key else None


def completed(storage, job_id: str, name: str = "result.json") -> dict | None:
    """The job's artifact once its record says *succeeded* (the record is written after the artifact)."""
    record = RecordStore(storage).get(job_id)
    return artifact(storage, job_id, name) if record and record["status"] == "succeeded" else None


def manifest(storage, job_id: str) -> dict | None:
    info = storage.head(manifest_key(job_id))
    return json.loads(storage.get(info.key)[0]) if info else None


def runs(storage, job_key: str) -> list[dict]:
    return sorted((json.loads(storage.get(k)[0]) for k in storage.list(f"runs/{job_key}/")), key=lambda r: r["time"])


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_sigkilled_training_resumes_from_its_last_checkpoint_with_a_bit_identical_result(broker, storage, start_node):
    # Given a training job that checkpoints every 0.3 s and never ends on its own on its first attempt
    start_node()
    job_id = f"train-{uuid.uuid4().hex[:8]}"
    broker.enqueue(job_message("training", "train_until_stopped", job_id, seed=SEED))
    wait_for(lambda: (m := manifest(storage, job_id)) and m["seq"] >= 2, 60, "a few checkpoints")

    # When its process is SIGKILLed (the attempt's pid is in its record since its first checkpoint)
    records = RecordStore(storage)
    victim = records.get(job_id)["attempts"][-1]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: gone(victim), 30, "the killed process to be gone")
    at_kill = manifest(storage, job_id)

    # Then it completes on another process, resumed from the checkpoint it had when it died
    result = wait_for(lambda: completed(storage, job_id), 120, "the training result")
    record = records.get(job_id)
    assert [a["outcome"] for a in record["attempts"]] == ["crashed", "succeeded"]
    assert record["attempts"][0]["pid"] == victim and record["attempts"][1]["pid"] != victim
    assert record["status"] == "succeeded"
    assert result["resumed_from"] == at_kill["meta"]["step"] > 0
    # and its result is bit-identical to an uninterrupted run of as many steps
    assert result["fingerprint"] == expected_fingerprint(result["steps"])


def test_sigterm_flushes_a_final_checkpoint_and_the_job_resumes_elsewhere_as_an_interruption(
    broker, storage, start_node, tmp_path
):
    # Given two one-worker nodes and a training job running on one of them
    nodes = {
        name: start_node("--processes", "1", env={"BURROW_NODE_ID": name, "BURROW_STATE_DIR": str(tmp_path / name)})
        for name in ("node-a", "node-b")
    }
    job_id = f"train-{uuid.uuid4().hex[:8]}"
    broker.enqueue(job_message("training", "train_until_stopped", job_id, seed=SEED))
    records = RecordStore(storage)
    first = wait_for(lambda: (records.get(job_id) or {}).get("attempts"), 60, "the job to start")[0]

    # When that node gets SIGTERM (a 5 s grace period)
    sigterm_at = time.time()
    assert nodes[first["node"]].stop(timeout_s=30) == 0

    # Then the job resumes on the other node and completes
    result = wait_for(lambda: completed(storage, job_id), 120, "the training result")
    record = records.get(job_id)
    interrupted, resumed = record["attempts"]
    assert interrupted["outcome"] == "interrupted" and interrupted["node"] == first["node"]
    assert resumed["outcome"] == "succeeded" and resumed["node"] != first["node"]
    # from the final checkpoint, taken after the signal: nothing computed before the signal was lost
    final = interrupted["checkpoint"]
    assert final is not None and result["resumed_from"] == final["meta"]["step"] > 0
    assert final["taken_at"] >= sigterm_at
    assert result["fingerprint"] == expected_fingerprint(result["steps"])
    # and a hand-back is not an error
    output = nodes[first["node"]].output()
    assert "Traceback" not in output and "[ERROR]" not in output


def test_a_job_redelivered_after_it_succeeded_is_not_run_twice(broker, storage, start_node):
    # Given a job that has completed
    start_node("--processes", "1")
    message = job_message("tests", "counted", "once", job_key="once")
    broker.enqueue(message)
    wait_for(lambda: artifact(storage, "once", "done.json") is not None, 60, "the job")

    # When the broker delivers it again (as after an ack lost with its connection)
    broker.enqueue(message)
    broker.enqueue(job_message("tests", "counted", "sentinel", job_key="sentinel"))
    wait_for(lambda: artifact(storage, "sentinel", "done.json") is not None, 60, "a job queued behind it")

    # Then it was acked without running again
    assert len(runs(storage, "once")) == 1
    record = RecordStore(storage).get("once")
    assert record["status"] == "succeeded" and len(record["attempts"]) == 1
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)


def test_a_job_whose_ack_was_lost_with_its_process_is_not_run_again(broker, storage, start_node):
    # Given a job whose worker dies right after recording success, before acking (a real redelivery)
    start_node("--processes", "1")
    broker.enqueue(job_message("tests", "dies_before_ack", "acked-late", job_key="acked-late"))

    # When the broker redelivers it and the queue drains
    wait_for(lambda: storage.head("runs/acked-late/died-before-ack"), 60, "the worker to die before the ack")
    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 0), 60, "the redelivery to be acked")
    broker.enqueue(job_message("tests", "counted", "sentinel", job_key="sentinel"))
    wait_for(lambda: artifact(storage, "sentinel", "done.json") is not None, 60, "a job queued behind it")

    # Then it ran exactly once
    assert len([r for r in storage.list("runs/acked-late/") if not r.endswith("died-before-ack")]) == 1
    record = RecordStore(storage).get("acked-late")
    assert record["status"] == "succeeded" and [a["outcome"] for a in record["attempts"]] == ["succeeded"]


def test_an_expired_job_never_runs_and_is_dead_lettered_as_expired(amqp_url, broker, queue_prefix, storage, start_node):
    # Given a job whose expiry has passed by the time a node sees it
    start_node("--processes", "1")
    options = JobOptions(job_id="stale", expires_at=time.time() - 1).to_options()
    broker.enqueue(
        Message(
            queue_name="tests", actor_name="counted", args=(), kwargs={"job_key": "stale"}, options={"job": options}
        )
    )

    # Then it lands in the dead-letter queue with reason "expired", never having run
    wait_for(lambda: broker.get_queue_message_counts("tests")[2] == 1, 60, "the expired job to dead-letter")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    method, properties, body = connection.channel().basic_get(queue_prefix + "tests.XQ", auto_ack=True)
    connection.close()
    assert death_reason(properties.headers) == "expired"
    assert Message.decode(body).options["job"]["job_id"] == "stale"
    assert runs(storage, "stale") == []
    assert RecordStore(storage).get("stale")["status"] == "expired"


def test_an_actor_that_always_raises_cools_down_longer_each_time_then_lands_in_failed_jobs(
    amqp_url, broker, queue_prefix, storage, start_node
):
    # Given an actor that always raises (max_failures=3, backoff 0.4 s doubling, with jitter)
    node = start_node("--processes", "1")
    broker.enqueue(job_message("tests.failing", "always_fails", "doomed", job_key="doomed"))

    # When its failure budget is spent
    wait_for(lambda: broker.get_queue_message_counts("failed-jobs")[0] == 1, 90, "the failed-jobs report")

    # Then it ran 1 + 3 times, each cooldown at least its fixed half (0.2, 0.4, 0.8 s): the floor doubles. (Lower
    # bounds only: a loaded machine makes every gap longer, never shorter; 10 ms for the broker's TTL rounding.)
    times = [r["time"] for r in runs(storage, "doomed")]
    assert len(times) == 4
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert [gap >= floor - 0.01 for gap, floor in zip(gaps, (0.2, 0.4, 0.8), strict=True)] == [True] * 3, gaps
    # and the failed-jobs queue holds the job with its whole history
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    method, properties, body = connection.channel().basic_get(queue_prefix + "failed-jobs", auto_ack=True)
    connection.close()
    report = Message.decode(body)
    assert report.actor_name == "route_failed_job"
    assert report.kwargs["job"]["options"]["job"]["job_id"] == "doomed"
    assert report.kwargs["job"]["options"]["job"]["failures"] == 4
    assert len(report.kwargs["attempts"]) == 4 and "max_failures=3" in report.kwargs["reason"]
    # and the record lists every attempt
    record = RecordStore(storage).get("doomed")
    assert record["status"] == "failed"
    assert [a["outcome"] for a in record["attempts"]] == ["failed"] * 4
    assert all("RuntimeError: doomed always fails" in a["error"] for a in record["attempts"])
    assert broker.get_queue_message_counts("tests.failing") == (0, 0, 0)
    # and the log names each failing message by actor and id, never with its arguments (a job's payload)
    output = node.output()
    assert "Failed to process message always_fails[" in output and "job_key='doomed'" not in output


def test_s3_outage_during_checkpoints_does_not_stop_the_job_and_checkpoints_land_afterwards(
    broker, start_node, restartable_s3, tmp_path
):
    # Given a node whose storage is an S3 endpoint, running a training job that checkpoints every 0.3 s
    storage = restartable_s3.storage()
    start_node("--processes", "1", env=restartable_s3.node_env())
    job_id, finish = f"train-{uuid.uuid4().hex[:8]}", tmp_path / "finish"
    broker.enqueue(job_message("training", "train_until_stopped", job_id, seed=SEED, until_file=str(finish)))
    before = wait_for(lambda: manifest(storage, job_id), 60, "the first checkpoint")

    # When the endpoint goes away for a while, mid-run, and comes back
    restartable_s3.stop()
    time.sleep(2.5)  # the outage itself, not a synchronisation
    restartable_s3.start()
    back_at = time.time()

    # Then checkpoints land again, further along, in the same attempt
    after = wait_for(
        lambda: (m := manifest(storage, job_id)) and m["stored_at"] > back_at and m, 60, "a checkpoint after"
    )
    assert after["meta"]["step"] > before["meta"]["step"] and after["attempt"] == before["attempt"]
    # and once told to finish, the job succeeds in that attempt with a bit-identical result
    finish.touch()
    result = wait_for(lambda: completed(storage, job_id), 120, "the training result")
    record = RecordStore(storage).get(job_id)
    assert [a["outcome"] for a in record["attempts"]] == ["succeeded"]
    assert result["fingerprint"] == expected_fingerprint(result["steps"])


def test_a_job_over_its_reservation_is_stopped_checkpointed_and_retried_as_a_failure(broker, storage, start_node):
    # Given a training job allowed 1 s per attempt whose first attempt never ends on its own
    start_node("--processes", "1")
    job_id = f"train-{uuid.uuid4().hex[:8]}"
    options = {"max_run_s": 1.0, "min_backoff_s": 0.2, "max_backoff_s": 0.5}
    broker.enqueue(job_message("training", "train_until_stopped", job_id, options=options, seed=SEED))

    # Then the attempt is stopped at its limit, checkpointed, counted as a failure and retried
    result = wait_for(lambda: completed(storage, job_id), 120, "the training result")
    record = RecordStore(storage).get(job_id)
    stopped, finished = record["attempts"]
    assert (stopped["outcome"], finished["outcome"]) == ("timed_out", "succeeded")
    # and the stop kept its work: the retry resumed from the checkpoint taken when it was stopped
    assert result["resumed_from"] == stopped["checkpoint"]["meta"]["step"] > 0
    assert result["fingerprint"] == expected_fingerprint(result["steps"])


def test_a_job_that_ignores_its_reservation_stop_is_killed_with_its_process_and_counted_as_a_failure(
    broker, storage, start_node
):
    # Given a job stuck in code that never checks should_stop, past its max_run_s (1 s) and a 1 s grace
    start_node("--processes", "1", env={"BURROW_GRACE_S": "1"})
    broker.enqueue(job_message("tests", "hangs_once", "hung", job_key="hung"))

    # Then its worker process is killed, the job comes back, and the next attempt completes
    wait_for(lambda: completed(storage, "hung", "done.json") is not None, 90, "the job after the kill")
    record = RecordStore(storage).get("hung")
    killed, finished = record["attempts"]
    assert killed["outcome"] == "timed_out" and killed["error"].startswith("killed:")  # a failure, counted
    assert finished["outcome"] == "succeeded" and finished["pid"] != killed["pid"]
    assert killed["killed"].startswith("killed:")  # the kill was noted before the process ended
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)


def test_inference_job_keeps_its_completion_as_its_result_and_malformed_input_is_dead_lettered(
    amqp_url, broker, queue_prefix, storage, start_node
):
    from actors.inference import complete

    start_node("--processes", "1")
    broker.enqueue(job_message("inference", "infer", "ok", prompt="the gpu", max_tokens=8))
    broker.enqueue(job_message("inference", "infer", "bad", prompt="the gpu", max_tokens=0))

    wait_for(lambda: (RecordStore(storage).get("ok") or {}).get("status") == "succeeded", 60, "the completion")
    record = RecordStore(storage).get("ok")
    assert record["result"]["value"]["completion"] == " ".join(complete("the gpu", 8))
    wait_for(lambda: broker.get_queue_message_counts("inference")[2] == 1, 60, "the malformed job to dead-letter")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    method, properties, body = connection.channel().basic_get(queue_prefix + "inference.XQ", auto_ack=True)
    connection.close()
    assert death_reason(properties.headers) == "malformed"
    assert "max_tokens must be an integer in 1..4096, got 0" in properties.headers["x-burrow-detail"]
    assert RecordStore(storage).get("bad")["status"] == "failed"


def test_a_job_that_hangs_every_time_is_killed_each_time_and_reaches_failed_jobs_after_max_failures(
    broker, storage, start_node
):
    # Given a job stuck in code that never checks should_stop (max_run_s 0.5 s, max_failures 2, 1 s grace)
    start_node("--processes", "1", env={"BURROW_GRACE_S": "1"})
    broker.enqueue(job_message("tests", "hangs_always", "hangs", job_key="hangs"))

    # Then each run's process is killed, each kill counts as a failure, and the third one gives up
    wait_for(lambda: broker.get_queue_message_counts("failed-jobs")[0] == 1, 120, "the failed-jobs report")
    record = RecordStore(storage).get("hangs")
    assert record["status"] == "failed"
    assert [a["outcome"] for a in record["attempts"]] == ["timed_out"] * 3
    assert len(runs(storage, "hangs")) == 3
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)
