"""Acceptance: with trusted keys a node runs only jobs the cloud signed. A job submitted with the signing key
runs (and its retries, republished by nodes, keep running); a tampered copy and an unsigned job are each
dead-lettered once as ``bad-signature`` — real broker, real node, real storage."""

from __future__ import annotations

import json

import pika
import pytest

from cloud.submit import Client
from node.contract.queues import death_reason
from node.contract.signing import new_key_pair
from node.settings import Settings
from node.storage.records import RecordStore
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

PRIVATE, PUBLIC = new_key_pair("k1")


def dead_letters(amqp_url: str, queue: str) -> list[tuple[str | None, str, dict]]:
    """(reason, detail, body) of every dead letter of ``queue`` (taken: the test owns the queue)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    found = []
    while True:
        method, properties, body = channel.basic_get(queue + ".XQ", auto_ack=True)
        if method is None:
            break
        headers = properties.headers or {}
        found.append((death_reason(headers), str(headers.get("x-burrow-detail", "")), json.loads(body)))
    connection.close()
    return found


def test_a_node_with_trusted_keys_runs_signed_jobs_and_dead_letters_tampered_and_unsigned_ones(
    amqp_url, queue_prefix, node_env, start_node, storage
):
    start_node(env={"BURROW_TRUSTED_KEYS": PUBLIC, "BURROW_NODE_HEARTBEAT_S": "0"})
    signing = Client(Settings.from_env({**node_env, "BURROW_SIGNING_KEY": PRIVATE}))
    unsigned = Client(Settings.from_env(node_env))
    records = RecordStore(storage)
    try:
        # A signed job runs; one that fails is retried by the node (republished, counters changed) and still
        # runs each time until its failures are spent.
        good = signing.submit("counted", job_key="good")
        assert good.wait(timeout=120)["status"] == "succeeded"
        failing = signing.submit("always_fails", job_key="retried")
        wait_for(lambda: (records.get(failing.job_id) or {}).get("status") == "failed", 120, "failures spent")
        # max_failures=3: three failures allowed, the fourth gives up; every retry was run, none dead-lettered.
        assert sum(a["outcome"] == "failed" for a in records.get(failing.job_id)["attempts"]) == 4
        # A signed job altered in flight (another argument), and a job with no signature at all.
        message = signing.build("counted", (), {"job_key": "tampered"}, job_type="polling")
        altered = message.asdict()
        altered["kwargs"] = {"job_key": "someone-elses"}
        plain = unsigned.build("counted", (), {"job_key": "unsigned"}, job_type="polling")
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue_prefix + "tests", json.dumps(altered).encode(), mandatory=True)
        channel.basic_publish("", queue_prefix + "tests", plain.encode(), mandatory=True)
        connection.close()
        # Each is dead-lettered exactly once, reason bad-signature, and neither ran.
        found: list = []
        wait_for(lambda: found.extend(dead_letters(amqp_url, queue_prefix + "tests")) or len(found) >= 2, 60, "2")
        assert sorted((reason, body["kwargs"]["job_key"]) for reason, _, body in found) == [
            ("bad-signature", "someone-elses"),
            ("bad-signature", "unsigned"),
        ]
        details = sorted(detail for _, detail, _ in found)
        assert details[0].startswith("options.job.signature: signature by key 'k1' does not match")
        assert details[1].startswith("options.job.signature: unsigned")
        assert not list(storage.list("runs/someone-elses/")) and not list(storage.list("runs/unsigned/"))
        assert not list(storage.list("runs/tampered/"))
        assert dead_letters(amqp_url, queue_prefix + "tests") == []  # once, not again
    finally:
        signing.close()
        unsigned.close()
