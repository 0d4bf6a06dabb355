"""Acceptance: the submit API and CLI end to end — sync, polling, batch and stream jobs, idempotency, cancel and
the payload limit — against the real broker, real `dramatiq node.actors` processes and real storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from actors.inference import complete
from cloud.batch import InvalidRows, read_rows
from cloud.submit import Client, JobFailed, PayloadTooLarge, idempotent_job_id
from node.errors import MalformedMessage
from node.settings import Settings
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

NODE_ARGV = [sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1", "--threads", "1"]
FAST = {"BURROW_NODE_HEARTBEAT_S": "0", "BURROW_CPU_SLOTS": "1", "BURROW_CANCEL_CHECK_S": "0.2"}


@pytest.fixture
def client(node_env: dict[str, str]):
    client = Client(Settings.from_env(node_env))
    yield client
    client.close()


def node(start_node, tmp_path: Path, name: str = "node-a", **env: str):
    env = {**FAST, "BURROW_NODE_ID": name, "BURROW_STATE_DIR": str(tmp_path / f"state-{name}"), **env}
    return start_node(argv=NODE_ARGV, env=env)


def burrow(node_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", *args], env=node_env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def runs(storage, job_key: str) -> int:
    return len(list(storage.list(f"runs/{job_key}/")))


def ready(client: Client, queue: str) -> int:
    counts = client.broker.inspect_queue(queue)
    return 0 if counts is None else counts[0]


def test_sync_polling_and_stream_jobs_end_to_end_through_submit_and_the_cli(client, start_node, tmp_path, node_env):
    worker = node(start_node, tmp_path)
    # sync: the caller blocks for the reply; the record is the durable copy it can read again later.
    handle = client.submit("echo", {"answer": 42}, job_type="sync")
    assert handle.result(timeout=60) == {"answer": 42}
    assert client.job(handle.job_id).result(timeout=0) == {"answer": 42}
    # ... an async def actor too, which finds its job context on the event loop thread
    handle = client.submit("async_echo", 5)
    assert handle.result(timeout=60) == {"value": 5, "job_id": handle.job_id}
    # ... integers beyond 64 bits included, as plain Dramatiq carries them (orjson alone read 10**30 as 1e+30)
    big = {"big": 10**30, "negative": -(2**70)}
    assert client.submit("echo", big, job_type="sync").result(timeout=60) == big
    polled = client.submit("echo", big)
    assert polled.result(timeout=60) == big and isinstance(client.job(polled.job_id).result(timeout=0)["big"], int)
    # polling: the record exists (queued) from submission; status walks to succeeded; result from storage.
    polling = client.submit("infer", prompt="the node", max_tokens=5, job_type="polling")
    assert polling.status() in ("queued", "running", "succeeded")
    assert polling.result(timeout=60) == {"prompt": "the node", "completion": " ".join(complete("the node", 5))}
    assert polling.status() == "succeeded"
    # stream: every token once, in order, then the end.
    stream = client.submit("generate", prompt="a gpu", max_tokens=20, checkpoint_every=4)
    assert list(stream.stream(timeout=60)) == complete("a gpu", 20)
    # ... and a caller that comes back later reads it again, from any chunk on.
    assert list(client.job(stream.job_id).stream(from_seq=15, timeout=60)) == complete("a gpu", 20)[15:]
    # The CLI: sync with --wait prints the id then the result; `burrow result` prints a polling job's result.
    out = burrow(node_env, "submit", "echo", "--kwargs", '{"value": [1, 2]}', "--type", "sync", "--wait")
    assert out.returncode == 0, out.stderr
    job_id, printed = out.stdout.splitlines()
    assert json.loads(printed) == [1, 2]
    out = burrow(node_env, "result", polling.job_id)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["completion"] == " ".join(complete("the node", 5))
    out = burrow(node_env, "submit", "generate", "--kwargs", '{"prompt": "a gpu", "max_tokens": 6}', "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == complete("a gpu", 6)
    # and no job's result was said to be discarded (Dramatiq warns so at every return value without its Results)
    assert "has been discarded" not in worker.output()


def test_a_stream_whose_node_is_killed_midway_reaches_its_caller_whole_in_order_once(
    client, start_node, tmp_path, storage
):
    release = tmp_path / "release"
    first = node(start_node, tmp_path, "node-a")
    handle = client.submit(
        "streams_tokens", job_key="s1", tokens=30, checkpoint_at=10, hold_at=15, release_file=str(release)
    )
    received: list[str] = []
    failure: list[BaseException] = []

    def read() -> None:
        try:
            received.extend(handle.stream(timeout=120))
        except BaseException as e:  # reported by the test
            failure.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: storage.head("held/s1") is not None and len(received) >= 15, 60, "15 chunks, then the hold")
    os.killpg(first.process.pid, signal.SIGKILL)  # chunks t10..t14 were sent after the last checkpoint
    first.process.wait()
    release.touch()
    node(start_node, tmp_path, "node-b")
    reader.join(timeout=120)
    assert not failure, failure
    assert received == [f"t{i}" for i in range(30)]  # no gap, no repeat, in order
    assert runs(storage, "s1") == 2  # it really ran twice: once killed, once resumed
    assert handle.result(timeout=30) == 30
    # A caller that reconnects (a new handle, from the first chunk it had not seen) gets the rest, once.
    assert list(client.job(handle.job_id).stream(from_seq=12, timeout=60)) == [f"t{i}" for i in range(12, 30)]


def test_idempotent_submission_through_the_api_and_a_csv_file_makes_each_job_once(
    client, start_node, tmp_path, storage, node_env
):
    first = client.submit("counted", job_key="k1", idempotency_key="order-17")
    again = client.submit("counted", job_key="k1", idempotency_key="order-17")
    assert again.job_id == first.job_id
    assert ready(client, "tests") == 1  # the second submission published nothing
    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text("job_key\n" + "".join(f"row{n}\n" for n in range(20)))
    for _ in range(2):
        out = burrow(node_env, "submit", "counted", "--file", str(csv_file), "--quiet")
        assert out.returncode == 0, out.stderr
    assert "already submitted earlier" in out.stdout
    assert ready(client, "tests") == 21
    node(start_node, tmp_path)
    wait_for(lambda: all(runs(storage, f"row{n}") for n in range(20)) and runs(storage, "k1"), 120, "every job ran")
    assert first.result(timeout=60) is None
    batch_id = out.stdout.split()[1].rstrip(":")
    out = burrow(node_env, "submit", "counted", "--file", str(csv_file), "--wait", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "succeeded 20" in out.stdout
    assert [runs(storage, f"row{n}") for n in range(20)] == [1] * 20 and runs(storage, "k1") == 1
    out = burrow(node_env, "job", f"{batch_id}-2")
    assert "succeeded" in out.stdout, out.stdout + out.stderr


def test_a_csv_with_three_bad_rows_out_of_a_thousand_names_them_and_submits_nothing(client, tmp_path, node_env):
    lines = ["seed,samples"] + [f"{n},1000" for n in range(1000)]
    lines[101] = "one,1000"  # not an int: file line 102
    lines[500] = "7,1000,extra"  # a value too many: file line 501
    lines[999] = ",1000"  # no seed (required): file line 1000
    path = tmp_path / "jobs.csv"
    path.write_text("\n".join(lines) + "\n")
    rows, unreadable = read_rows(path)
    assert unreadable == [(501, "3 values for 2 columns")]
    out = burrow(node_env, "submit", "simulate", "--file", str(path))
    assert out.returncode == 2
    assert "3 bad row(s)" in out.stderr
    for line in ("line 102:", "line 501:", "line 1000:"):
        assert line in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # The API: a list of items, numbered from 1.
    items = [{"seed": n, "samples": 1000} for n in range(1000)]
    items[10] = {"samples": 5}  # no seed
    items[500] = {"seed": 1, "bogus": 2}  # no such parameter
    items[999] = {"seed": 1, "samples": "x" * (client.settings.max_payload_bytes + 1)}  # too big
    with pytest.raises(InvalidRows) as caught:
        client.submit_batch("simulate", items)
    assert [line for line, _ in caught.value.problems] == [11, 501, 1000]
    assert ready(client, "simulation") == 0
    assert not list(client.storage.list("batches/"))
    # and an item that is not keyword arguments says so (not "dictionary update sequence element #0 …")
    with pytest.raises(InvalidRows) as caught:
        client.submit_batch("simulate", [{"seed": 1}, "seed=2", [3]])
    assert caught.value.problems == [
        (2, "must be an object of keyword arguments, got str"),
        (3, "must be an object of keyword arguments, got list"),
    ]
    assert ready(client, "simulation") == 0


def test_cancel_a_queued_job_and_a_running_job_neither_is_retried_nor_re_dispatched(
    client, start_node, tmp_path, storage
):
    queued = client.submit("counted", job_key="never")
    assert queued.cancel() == "cancelled"
    running = client.submit("runs_until_stopped", job_key="long")
    node(start_node, tmp_path)
    wait_for(lambda: running.status() == "running" and runs(storage, "long"), 60, "the long job running")
    assert running.cancel() == "running"  # asked to stop
    with pytest.raises(JobFailed) as caught:
        running.result(timeout=60)
    assert caught.value.status == "cancelled"
    with pytest.raises(JobFailed):
        queued.result(timeout=0)
    # Drain the node's queue with a later job, so the cancelled copy was certainly looked at.
    assert client.submit("echo", "after", job_type="sync").result(timeout=60) == "after"
    assert runs(storage, "never") == 0 and runs(storage, "long") == 1
    assert running.record()["attempts"][-1]["outcome"] == "cancelled"
    assert ready(client, "failed-jobs") == 0  # nothing was handed to the router
    assert queued.status() == "cancelled" and running.status() == "cancelled"


def test_a_cancel_reaches_a_running_job_at_once_by_broadcast_not_at_the_next_record_read(
    client, start_node, tmp_path, storage
):
    # Given a node that reads a running job's record for a cancel only every 10 minutes
    running = client.submit("runs_until_stopped", job_key="broadcast")
    node(start_node, tmp_path, BURROW_CANCEL_CHECK_S="600")
    wait_for(lambda: running.status() == "running" and runs(storage, "broadcast"), 60, "the job running")

    # When its submitter cancels it, the job stops (well before the next record read) and ends cancelled
    assert running.cancel() == "running"
    with pytest.raises(JobFailed) as caught:
        running.result(timeout=60)
    assert caught.value.status == "cancelled"
    assert running.record()["attempts"][-1]["outcome"] == "cancelled"


def test_an_oversized_payload_is_refused_before_anything_is_published(client, tmp_path, node_env):
    big = "x" * (client.settings.max_payload_bytes + 1)
    with pytest.raises(PayloadTooLarge, match="put_input"):
        client.submit("echo", big, idempotency_key="big-one")
    assert ready(client, "tests") == 0
    assert client.records.get(idempotent_job_id("big-one")) is None
    (tmp_path / "big.json").write_text(json.dumps({"value": big}))
    out = burrow(node_env, "submit", "echo", "--kwargs", f"@{tmp_path / 'big.json'}")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "BURROW_MAX_PAYLOAD_BYTES" in out.stderr
    assert ready(client, "tests") == 0
    # The documented way: store it, pass the reference.
    ref = client.put_input(big.encode())
    assert client.put_input(big.encode()) == ref  # content-addressed: stored once
    assert client.storage.get(ref)[0] == big.encode()


def test_a_stream_reader_gives_up_after_its_timeout_when_nothing_comes(client):
    # (TimeoutError is an OSError: the reader took its own timeout for a lost connection and read on forever)
    handle = client.job("no-such-stream-job")
    with pytest.raises(TimeoutError, match="no chunk of job no-such-stream-job for 1s"):
        list(handle.stream(timeout=1))


@pytest.mark.parametrize("job_id", ["", "a/../b", "x" * 300])
def test_a_handle_for_an_id_no_job_can_have_is_refused(client, job_id):
    with pytest.raises(MalformedMessage, match="is not a usable job id"):
        client.job(job_id).cancel()
    assert list(client.storage.list("records/")) == []


def test_a_stream_reader_skips_what_it_cannot_decode_and_keeps_the_first_good_chunk_of_each_number(
    client, amqp_url, queue_prefix
):
    import pika

    from node.contract.streams import END_SEQ, JOB_HEADER, SEQ_HEADER, StreamEnd, declare_chunks_stream, encode_chunk

    # Given a job's stream holding garbled chunks and end messages beside the good ones
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    stream = declare_chunks_stream(channel, queue_prefix)
    sent = [
        (b"j{not json", 0),
        (b"?not a chunk", 0),
        (b"", 0),
        (encode_chunk("t0"), 0),
        (b"j[" * 100_000, 1),
        (encode_chunk("t1"), 1),
        (b"e{garbage", END_SEQ),
        (b'e{"status": "succeeded"}', END_SEQ),
        (StreamEnd(status="succeeded", chunks=2).encode(), END_SEQ),
    ]
    for body, seq in sent:
        channel.basic_publish("", stream, body, pika.BasicProperties(headers={JOB_HEADER: "garbled", SEQ_HEADER: seq}))
    connection.close()

    # Then its reader yields every good chunk once, in order, and ends at the good end message
    assert list(client.job("garbled").stream(timeout=60)) == ["t0", "t1"]


@pytest.mark.parametrize("submitted_at", [1e300, float("nan"), "yesterday"])
def test_a_submission_time_no_clock_can_have_reads_the_stream_from_its_start(
    client, amqp_url, queue_prefix, submitted_at
):
    import pika

    from cloud.submit import JobHandle
    from node.contract.streams import END_SEQ, JOB_HEADER, SEQ_HEADER, StreamEnd, declare_chunks_stream, encode_chunk

    # Given a job's stream, and a handle whose submission time (from a damaged record) is no usable time
    job_id = f"odd-time-{len(str(submitted_at))}"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    stream = declare_chunks_stream(channel, queue_prefix)
    for body, seq in [(encode_chunk("t0"), 0), (StreamEnd(status="succeeded", chunks=1).encode(), END_SEQ)]:
        channel.basic_publish("", stream, body, pika.BasicProperties(headers={JOB_HEADER: job_id, SEQ_HEADER: seq}))
    connection.close()

    # Then the stream is read from its start (a date from it raised OverflowError or ValueError)
    handle = JobHandle(client, job_id, job_type="stream", submitted_at=submitted_at)
    assert list(handle.stream(timeout=60)) == ["t0"]
