"""Acceptance: jobs longer than the broker's consumer_timeout (on a private RabbitMQ node with a 5 s one).

RabbitMQ closes the channel of a delivery left unacked past ``consumer_timeout`` and redelivers the job while
it still runs. A node acks the delivery of a long job early and guards the job with a lease
(``node.attempt.lease``): the job completes once, one execution at a time, and a node killed mid-job still has
its job run again elsewhere, from its checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from node.broker import QuorumRabbitmqBroker
from node.contract.topology import load_topology, queue_name
from node.storage.records import RecordStore
from tests.conftest import job_message, wait_for
from tests.rabbitmq_node import RABBITMQ_SERVER, PrivateRabbitmq

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

CONSUMER_TIMEOUT_S = 5
#: The broker looks at consumer timeouts once per channel tick (60 s by default): tick every second, so a
#: delivery held past 5 s really is taken away within the test.
ADVANCED = "[{rabbit, [{channel_tick_interval, 1000}]}]."


@pytest.fixture(scope="module")
def short_timeout_rabbitmq(tmp_path_factory):
    if not Path(RABBITMQ_SERVER).exists() and shutil.which("rabbitmq-server") is None:
        pytest.fail("rabbitmq-server is not installed: the long-job tests need a private node", pytrace=False)
    node = PrivateRabbitmq(
        tmp_path_factory.mktemp("rmq"), config=f"consumer_timeout = {CONSUMER_TIMEOUT_S * 1000}\n", advanced=ADVANCED
    )
    node.start()
    yield node
    node.discard()  # its files are thrown away: no clean shutdown needed


@pytest.fixture
def client(short_timeout_rabbitmq, queue_prefix):
    broker = QuorumRabbitmqBroker(url=short_timeout_rabbitmq.url, queue_prefix=queue_prefix)
    yield broker
    broker.close()


def _node_env(rabbitmq: PrivateRabbitmq, tmp_path: Path, name: str) -> dict[str, str]:
    return {
        "AMQP_URL": rabbitmq.url,
        "BURROW_CONSUMER_TIMEOUT_S": str(CONSUMER_TIMEOUT_S),
        "BURROW_CPU_SLOTS": "1",
        "BURROW_NODE_ID": name,
        "BURROW_STATE_DIR": str(tmp_path / f"state-{name}"),
    }


def _runs(storage, key: str) -> list[dict]:
    return [json.loads(storage.get(k)[0]) for k in sorted(storage.list(f"runs/{key}/"))]


def test_a_job_three_times_the_consumer_timeout_completes_once_and_its_slot_takes_nothing_meanwhile(
    short_timeout_rabbitmq, client, storage, start_node, tmp_path
):
    # Given two one-slot nodes on a broker whose consumer_timeout is 5 s
    nodes = [start_node(env=_node_env(short_timeout_rabbitmq, tmp_path, name)) for name in ("node-a", "node-b")]
    records = RecordStore(storage)

    # When one of them runs a job three times as long as the timeout, and short jobs arrive meanwhile
    client.enqueue(job_message("tests", "runs_long", "long", job_key="long", steps=30, step_s=0.5))
    busy = wait_for(lambda: _runs(storage, "long"), 60, "the long job to start")[0]["node"]
    shorts = [f"short-{i}" for i in range(3)]
    for key in shorts:
        client.enqueue(job_message("tests", "counted", key, job_key=key))

    # Then the long job completes once, in one execution, its delivery acked early and its lease renewed
    # (unacked, the broker would have taken its delivery away at 5 s and given it to the idle node)
    wait_for(lambda: (records.get("long") or {}).get("status") == "succeeded", 120, "the long job to succeed")
    record = records.get("long")
    assert [a["outcome"] for a in record["attempts"]] == ["succeeded"], record["attempts"]
    assert record["attempts"][0].get("released_at") is not None
    assert record["attempts"][0]["renewals"] > 0
    assert record["result"]["value"] == {"steps": 30, "resumed_from": 0}
    assert len(_runs(storage, "long")) == 1

    # And the short jobs each ran once, all on the other node: the busy slot took none while its long job
    # ran (one held unacked behind it would have had its channel closed for a timed-out acknowledgement)
    for key in shorts:
        wait_for(lambda key=key: (records.get(key) or {}).get("status") == "succeeded", 60, key)
        assert [r["node"] for r in _runs(storage, key)] != [busy]
        assert len(_runs(storage, key)) == 1
    for node in nodes:
        assert "acknowledgement" not in node.output()
        # (lease copies were looked at and skipped, quietly: Dramatiq's skip warning would print the arguments)
        assert "was skipped" not in node.output()

    # And nothing is left in the queue (the lease copy found the job over and was dropped)
    wait_for(lambda: client.get_queue_message_counts("tests") == (0, 0, 0), 30, "an empty queue")


def test_a_node_killed_after_releasing_a_long_job_still_has_it_run_again_from_its_checkpoint(
    short_timeout_rabbitmq, queue_prefix, storage, start_node, tmp_path
):
    # (on a queue topology, so a slot's polling consumer releases the job: the first test covers the other)
    topology_file = tmp_path / "topology.toml"
    topology_file.write_text('priorities = ["bulk"]\njob_types = ["batch"]\n[subclouds.public]\n')
    queue = queue_name("public", "batch", "any", "bulk")
    client = QuorumRabbitmqBroker(
        url=short_timeout_rabbitmq.url, queue_prefix=queue_prefix, topology=load_topology(topology_file)
    )
    client.declare_queue(queue, ensure=True)
    topology = {"BURROW_TOPOLOGY": str(topology_file)}

    # Given a long job running on node A, past the point where its delivery was acked early
    node_a = start_node(env={**_node_env(short_timeout_rabbitmq, tmp_path, "node-a"), **topology})
    records = RecordStore(storage)
    client.enqueue(job_message(queue, "runs_long", "killed", job_key="killed", steps=16, step_s=0.5))

    def renewed() -> bool:
        attempts = (records.get("killed") or {}).get("attempts") or [{}]
        return attempts[-1].get("renewals", 0) >= 1 and bool(storage.list("jobs/killed/checkpoints/"))

    wait_for(renewed, 60, "node A to release the job and renew its lease")

    # When node A vanishes (SIGKILL, no word to anyone), and node B is up
    # (its worker first: the workers run in sessions of their own, and would get a SIGTERM when their
    # supervisor dies; then the supervisor)
    os.kill(records.get("killed")["attempts"][-1]["pid"], signal.SIGKILL)
    os.killpg(node_a.process.pid, signal.SIGKILL)
    node_a.process.wait()
    start_node(env={**_node_env(short_timeout_rabbitmq, tmp_path, "node-b"), **topology})

    # Then the lease copy finds A silent, and B runs the job from A's checkpoint to success, once
    wait_for(lambda: (records.get("killed") or {}).get("status") == "succeeded", 120, "the job to succeed on B")
    record = records.get("killed")
    assert [a["outcome"] for a in record["attempts"]] == ["lost", "succeeded"], record["attempts"]
    assert [a["node"] for a in record["attempts"]] == ["node-a", "node-b"]
    runs = _runs(storage, "killed")
    assert [r["node"] for r in sorted(runs, key=lambda r: r["time"])] == ["node-a", "node-b"]
    assert record["result"]["value"]["resumed_from"] > 0
    wait_for(lambda: client.get_queue_message_counts(queue) == (0, 0, 0), 30, "an empty queue")
    client.close()
