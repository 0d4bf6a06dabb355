"""`burrow dlq`: list dead letters without taking or reordering them; requeue through the router; purge."""

from __future__ import annotations

import subprocess
import sys
import time

import pika
import pytest
from dramatiq import Message

from node.contract.job_options import JobOptions
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def burrow(node_env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", *args],
        env=node_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def test_dlq_lists_without_losing_or_reordering_requeues_and_purges(
    amqp_url, queue_prefix, broker, start_node, node_env
):
    # Given a node (no router) and, in its dead-letter queue, garbage and three expired jobs
    start_node("--processes", "1")
    broker.declare_queue("tests", ensure=True)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().basic_publish("", queue_prefix + "tests", b"\xffgarbage")
    connection.close()
    for i in range(3):
        job = JobOptions(job_id=f"late-{i}", expires_at=1.0).to_options()
        broker.enqueue(Message("tests", "tracked", (), {"job_key": f"late-{i}"}, {"job": job}))
    wait_for(lambda: broker.get_queue_message_counts("tests")[2] == 4, 60, "four dead letters")

    # When an operator lists them twice
    first, second = burrow(node_env, "dlq", "list"), burrow(node_env, "dlq", "list")

    # Then both listings are the same, in order, with reasons, and nothing was taken
    assert first.returncode == 0, first.stderr
    without_age = lambda out: [line.split()[:1] + line.split()[2:] for line in out.splitlines()]  # noqa: E731
    assert without_age(first.stdout) == without_age(second.stdout)
    lines = [line for line in first.stdout.splitlines()[1:] if line.startswith(("late-", "dl-"))]
    assert [line.split()[0] for line in lines][1:] == ["late-0", "late-1", "late-2"]
    assert "malformed" in lines[0] and all("expired" in line for line in lines[1:])
    assert broker.get_queue_message_counts("tests")[2] == 4
    shown = burrow(node_env, "dlq", "show", "late-1")
    assert shown.returncode == 0 and '"job_key":"late-1"' in shown.stdout

    # When one is requeued: it goes to the router's queue, acked from the dead letters in the same commit
    requeued = burrow(node_env, "dlq", "requeue", "late-1")
    assert requeued.returncode == 0
    assert broker.get_queue_message_counts("tests")[2] == 3
    assert broker.get_queue_message_counts("failed-jobs")[0] == 1
    bad = burrow(node_env, "dlq", "requeue", lines[0].split()[0])
    assert bad.returncode == 2 and "cannot be requeued" in bad.stderr

    # And purge asks first, then deletes
    refused = burrow(node_env, "dlq", "purge", stdin="n\n")
    assert refused.returncode == 1 and broker.get_queue_message_counts("tests")[2] == 3
    assert burrow(node_env, "dlq", "purge", "--yes").returncode == 0
    assert broker.get_queue_message_counts("tests")[2] == 0


def test_quarantine_purge_asks_first_and_honours_older_than(node_env, storage):
    from cloud.routing.quarantine import Quarantine

    quarantine = Quarantine(storage)
    now = time.time()
    for entry_id, age_s in (("old-1", 7200), ("old-2", 7200), ("new-1", 60)):
        quarantine.put({"id": entry_id, "reason": "test", "quarantined_at": now - age_s, "queue": "tests"})
    listed = burrow(node_env, "quarantine", "list")
    assert listed.returncode == 0 and "(3 quarantined)" in listed.stdout

    refused = burrow(node_env, "quarantine", "purge", "--older-than", "1h", stdin="n\n")
    assert refused.returncode == 1 and sorted(quarantine.ids()) == ["new-1", "old-1", "old-2"]
    done = burrow(node_env, "quarantine", "purge", "--older-than", "1h", stdin="y\n")
    assert done.returncode == 0 and "2 deleted" in done.stdout
    assert list(quarantine.ids()) == ["new-1"]
    bad = burrow(node_env, "quarantine", "purge", "--older-than", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("burrow: error: --older-than 'soon'")
    # an empty age (an unset shell variable) is no age, not "everything"
    empty = burrow(node_env, "quarantine", "purge", "--older-than", "", "--yes")
    assert empty.returncode == 2 and empty.stderr.startswith("burrow: error: --older-than ''")
    assert list(quarantine.ids()) == ["new-1"]


def test_a_dead_letter_nested_past_the_decoders_depth_is_listed(amqp_url, queue_prefix, broker, start_node, node_env):
    # Given a body a node dead-lettered as malformed because it nests deeper than any decoder follows
    start_node("--processes", "1")
    broker.declare_queue("tests", ensure=True)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().basic_publish("", queue_prefix + "tests", b"[" * 100_000 + b"]" * 100_000)
    connection.close()
    wait_for(lambda: broker.get_queue_message_counts("tests")[2] == 1, 60, "the dead letter")
    # Then the operator can list it (it used to end in a RecursionError traceback)
    listed = burrow(node_env, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "nested too deeply" in listed.stdout or "malformed" in listed.stdout


#: Dead letters with headers no broker or node wrote (any publisher may set any header), and the reason shown.
ODD_HEADERS = [
    ({"x-burrow-reason": 5, "x-burrow-detail": ["a"]}, "5"),
    ({"x-burrow-reason": b"\xffbad"}, "\ufffdbad"),
    ({"x-death": "not a list"}, "unknown"),
    ({"x-death": [5, "x", {"queue": 3, "reason": None, "time": "noon"}]}, "None"),
    ({"x-death": [{"reason": "rejected", "count": "x", "time": 7}]}, "rejected"),
]


def test_dead_letters_with_headers_no_broker_wrote_are_listed_and_forwarded(amqp_url, queue_prefix, broker, node_env):
    from cloud.dlq import _parse
    from cloud.routing.housekeeping import dead_letter_report

    broker.declare_queue("tests", ensure=True)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for headers, _ in ODD_HEADERS:
        channel.basic_publish("", queue_prefix + "tests.XQ", b"{}", pika.BasicProperties(headers=headers))
    connection.close()
    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 5), 60, "the five dead letters")

    # `burrow dlq list` lists them all (this was a traceback that listed none)
    listed = burrow(node_env, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "(5 dead-lettered)" in listed.stdout, listed.stdout
    # and each one's reason is what it says, as the router's forwarder reads it too
    for headers, reason in ODD_HEADERS:
        properties = pika.BasicProperties(headers=headers)
        assert _parse("tests", 1, properties, b"{}").reason == reason
        assert dead_letter_report("tests", b"{}", properties).kwargs["dead_letter_reason"] == reason
    # nothing taken (the listing's returns settle in the broker after its connection closed)
    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 5), 60, "all five dead letters back")
