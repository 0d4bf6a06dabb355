"""Acceptance: a node loses no job when worker processes die, crash-loop, or are restarted."""

from __future__ import annotations

import json
import os
import signal
import sys

import pika
import pytest
from dramatiq import Message

from node.storage.records import RecordStore
from node.supervisor.process import EXIT_BOOT_FAILED
from tests.conftest import send, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def runs(storage, job_key: str) -> list[int]:
    """PIDs that started ``job_key``, one entry per run."""
    return [int(key.rsplit("/", 1)[1].split("-")[0]) for key in storage.list(f"runs/{job_key}/")]


def result(storage, job_key: str) -> dict | None:
    info = storage.head(f"results/{job_key}.json")
    return json.loads(storage.get(info.key)[0]) if info else None


def slot_statuses(state_dir) -> dict[str, dict]:
    statuses = {}
    for path in (state_dir / "slots").glob("*.json"):
        try:
            statuses[path.stem] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    return statuses


def test_sigkilled_job_is_redelivered_and_completes_on_another_process(broker, storage, start_node):
    # Given two independent `dramatiq node.actors` processes and four jobs
    dramatiq_argv = [sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1", "--threads", "1"]
    start_node(argv=dramatiq_argv)
    start_node(argv=dramatiq_argv)
    keys = [f"job-{i}" for i in range(4)]
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)
    for key in keys:
        send(broker, "tests", "tracked", job_key=key, work_s=1.5)

    # When the process running the first job to start is killed with SIGKILL mid-run
    victim_key, victim_pid = wait_for(
        lambda: next(((k, runs(storage, k)[0]) for k in keys if runs(storage, k)), None), 60, "a job to start"
    )
    os.kill(victim_pid, signal.SIGKILL)

    # Then every job completes, the victim's on another process, and nothing is left over or dead-lettered
    wait_for(lambda: all(result(storage, k) for k in keys), 90, "all four jobs to complete")
    assert result(storage, victim_key)["pid"] != victim_pid
    assert victim_pid in runs(storage, victim_key) and len(runs(storage, victim_key)) >= 2
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_crash_looping_job_reaches_failed_jobs_after_max_failures_with_its_record_closed(
    amqp_url, broker, queue_prefix, storage, start_node, how
):
    # Given a node under `burrow node` and a job that kills its worker process every time (max_failures=3)
    start_node()
    message = send(broker, "tests.poison", "crash_always", job_key="poison", how=how)

    # When it has crashed its way through its failure budget
    wait_for(lambda: broker.get_queue_message_counts("failed-jobs")[0] == 1, 120, "the failed-jobs report")

    # Then it ran 1 + max_failures times, each crash counted once, and was reported with its history
    assert len(runs(storage, "poison")) == 4
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    method, properties, body = connection.channel().basic_get(queue_prefix + "failed-jobs", auto_ack=True)
    connection.close()
    report = Message.decode(body)
    assert report.kwargs["job"]["message_id"] == message.message_id
    assert report.kwargs["job"]["options"]["job"]["failures"] == 4
    assert "crashed 4 times (max_failures=3)" in report.kwargs["reason"]
    # and its record is failed with every attempt closed as crashed
    record = RecordStore(storage).get(message.message_id)
    assert record["status"] == "failed"
    assert [a["outcome"] for a in record["attempts"]] == ["crashed"] * 4
    # and nothing is left in the work queue or its dead-letter queue
    assert broker.get_queue_message_counts("tests.poison") == (0, 0, 0)

    # And the node keeps serving other jobs
    send(broker, "tests", "tracked", job_key="after-poison", work_s=0.1)
    wait_for(lambda: result(storage, "after-poison"), 60, "a normal job after the poison one")


def test_killing_one_worker_leaves_the_other_running_and_it_comes_back(broker, storage, start_node, tmp_path):
    # Given `burrow node` with two workers, each running a job
    start_node()
    state_dir = tmp_path / "state"
    first = wait_for(lambda: len(slot_statuses(state_dir)) == 2 and slot_statuses(state_dir), 60, "two workers")
    send(broker, "tests", "tracked", job_key="a", work_s=2)
    send(broker, "tests", "tracked", job_key="b", work_s=2)
    wait_for(lambda: runs(storage, "a") and runs(storage, "b"), 60, "both jobs to start")
    (pid_a,), (pid_b,) = runs(storage, "a"), runs(storage, "b")
    assert pid_a != pid_b

    # When worker A is killed
    os.kill(pid_a, signal.SIGKILL)

    # Then job B finishes on its worker without a restart, and A's slot comes back with a new process
    wait_for(lambda: result(storage, "b"), 60, "job b")
    assert runs(storage, "b") == [pid_b] and result(storage, "b")["pid"] == pid_b
    slot_a = next(slot for slot, status in first.items() if status["pid"] == pid_a)
    back = wait_for(
        lambda: slot_statuses(state_dir).get(slot_a, {}).get("pid", pid_a) != pid_a and slot_statuses(state_dir),
        60,
        "the killed slot to come back",
    )
    os.kill(back[slot_a]["pid"], 0)  # alive
    # And job A was redelivered and completed elsewhere
    wait_for(lambda: result(storage, "a"), 60, "job a")
    assert result(storage, "a")["pid"] != pid_a
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)


def test_sigterm_drains_running_job_and_leaves_queued_jobs_untouched(
    amqp_url, broker, queue_prefix, storage, start_node
):
    # Given a one-worker node running a job with another job queued behind it
    node = start_node("--processes", "1")
    send(broker, "tests", "tracked", job_key="running", work_s=2)
    send(broker, "tests", "tracked", job_key="queued", work_s=2)
    wait_for(lambda: runs(storage, "running") or runs(storage, "queued"), 60, "a job to start")
    started = "running" if runs(storage, "running") else "queued"
    waiting = "queued" if started == "running" else "running"

    # When the node gets one SIGTERM (the provider's interruption notice)
    assert node.stop(timeout_s=30) == 0

    # Then the running job finished and was acked; the queued one was never taken (no delivery spent)
    assert result(storage, started) is not None
    assert not runs(storage, waiting)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    method, properties, body = connection.channel().basic_get(queue_prefix + "tests", auto_ack=True)
    connection.close()
    assert method is not None and Message.decode(body).kwargs["job_key"] == waiting
    assert int((properties.headers or {}).get("x-delivery-count", 0)) == 0


def test_an_actor_module_that_does_not_import_stops_the_worker_in_one_line(start_node):
    node = start_node(
        argv=[sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1"],
        env={"BURROW_ACTOR_MODULES": "tests.workload,no_such_actors"},
    )
    assert node.process.wait(timeout=30) == EXIT_BOOT_FAILED  # Dramatiq's own "import failed" is 2, with a traceback
    output = node.output()
    problem = "cannot import 'no_such_actors': ModuleNotFoundError: No module named"
    assert f"Cannot start worker: BURROW_ACTOR_MODULES: {problem}" in output
    assert "Traceback" not in output


def test_actor_modules_that_declare_no_actor_stop_the_worker_in_one_line(start_node):
    # (the package `actors` for its modules, say: the node sat idle, taking no job and saying nothing)
    node = start_node(
        argv=[sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1"], env={"BURROW_ACTOR_MODULES": "json"}
    )
    assert node.process.wait(timeout=30) == EXIT_BOOT_FAILED
    output = node.output()
    assert "Cannot start worker: BURROW_ACTOR_MODULES: json declare no actor: this node would take no job" in output
    assert "Traceback" not in output
