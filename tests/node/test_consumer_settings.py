"""Per-job-type consumer settings (the topology's ``[consumers.<job type>]``): a slot runs short jobs side by
side and keeps GPU-type work to itself. Real RabbitMQ, a real ``burrow node``."""

from __future__ import annotations

import dramatiq
import pytest

from node.broker import QuorumRabbitmqBroker
from node.contract.topology import load_topology
from node.middleware import JobSubmission
from node.storage.records import RecordStore
from tests.conftest import delete_namespace, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOPOLOGY_TOML = """
priorities = ["bulk"]
job_types = ["sync", "batch"]

[subclouds.a]

[consumers.sync]
prefetch = 3
"""


@pytest.fixture
def submitter(amqp_url, queue_prefix, tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY_TOML)
    topology = load_topology(path)
    broker = QuorumRabbitmqBroker(
        url=amqp_url, queue_prefix=queue_prefix, middleware=[JobSubmission()], topology=topology
    )
    for name in topology.queue_names():
        broker.declare_queue(name, ensure=True)
    holds = dramatiq.Actor(
        lambda job_key, release_file: None,
        broker=broker,
        actor_name="holds_slot",
        queue_name="tests",
        priority=0,
        options={},
    )
    yield broker, holds, path
    broker.close()
    delete_namespace(amqp_url, queue_prefix, topology.queue_names())


def test_a_slot_runs_three_sync_jobs_at_once_and_no_batch_job_beside_them(submitter, start_node, storage, tmp_path):
    broker, holds, topology_file = submitter
    release = str(tmp_path / "release")

    # Given three sync jobs and a batch job waiting, each running until the test releases them
    def send(key: str, kind: str):
        return holds.send_with_options(kwargs={"job_key": key, "release_file": release}, job_type=kind, subcloud="a")

    sync = [send(f"s{n}", "sync") for n in range(3)]
    batch = send("b0", "batch")
    assert batch.queue_name == "a.batch.any.bulk"

    # When a node with one slot serves them
    start_node(env={"BURROW_TOPOLOGY": str(topology_file), "BURROW_SUBCLOUD": "a", "BURROW_CPU_SLOTS": "1"})

    # Then its slot runs the three sync jobs at once (none can end before the release)
    wait_for(lambda: all(list(storage.list(f"runs/s{n}/")) for n in range(3)), 90, "three sync jobs running at once")
    # and holds no batch job meanwhile (prefetch 1: it never has company)
    assert broker.inspect_queue("a.batch.any.bulk")[0] == 1
    assert not list(storage.list("runs/b0/"))

    # and once released, every job succeeds, the batch job after the sync ones
    open(release, "w").close()
    records = RecordStore(storage)
    jobs = [*sync, batch]
    wait_for(lambda: all((records.get(m.message_id) or {}).get("status") == "succeeded" for m in jobs), 90, "all jobs")
    started = {m.kwargs["job_key"]: records.get(m.message_id)["attempts"][0]["started_at"] for m in jobs}
    ended = max(records.get(m.message_id)["attempts"][0]["ended_at"] for m in sync)
    assert started["b0"] >= ended
