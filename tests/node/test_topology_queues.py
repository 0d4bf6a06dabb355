"""Nodes on a topology: priority classes on quorum queues, subclouds kept apart, submits refused that would
go nowhere. Real RabbitMQ, real `dramatiq node.actors` processes."""

from __future__ import annotations

import subprocess
import sys

import dramatiq
import pytest

from node.broker import QuorumRabbitmqBroker
from node.contract.topology import load_topology
from node.errors import NoSuchQueue
from node.middleware import JobSubmission
from node.storage.records import RecordStore
from tests.conftest import delete_namespace, wait_for

TOPOLOGY_TOML = """
priorities = ["urgent", "bulk", "test"]
job_types = ["sync"]

[subclouds.a]
models = ["llama3-8b"]

[subclouds.b]
models = ["llama3-8b"]
fallback = ["a"]

[subclouds.c]
models = ["llama3-8b"]
"""


@pytest.fixture
def topology_file(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY_TOML)
    return path


@pytest.fixture
def submitter(amqp_url, queue_prefix, topology_file):
    """A cloud-side broker on the topology, with every queue of subclouds a and b applied (c is not)."""
    topology = load_topology(topology_file)
    broker = QuorumRabbitmqBroker(
        url=amqp_url, queue_prefix=queue_prefix, middleware=[JobSubmission()], topology=topology
    )
    for name in topology.queue_names():
        if not name.startswith("c."):
            broker.declare_queue(name, ensure=True)
    inference = dramatiq.Actor(
        lambda job_key: None,
        broker=broker,
        actor_name="inference",
        queue_name="tests",
        priority=0,
        options={"model": "llama3-8b", "job_type": "sync"},
    )
    yield broker, inference, topology
    broker.close()
    delete_namespace(amqp_url, queue_prefix, topology.queue_names())


def unacked(prefix: str) -> int:
    """Unacknowledged messages over every queue of this test, as the broker reports them."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return sum(
        int(p[1]) for p in (line.split() for line in out.splitlines()) if len(p) == 2 and p[0].startswith(prefix)
    )


def test_an_urgent_job_starts_before_a_thousand_waiting_bulk_jobs_one_unacked_at_a_time(
    submitter, start_node, storage, topology_file, queue_prefix
):
    broker, inference, topology = submitter
    # Given 1,000 bulk jobs waiting, then one urgent job, for subcloud a
    for n in range(1000):
        inference.send_with_options(kwargs={"job_key": f"bulk-{n}"}, subcloud="a", priority="bulk")
    urgent = inference.send_with_options(kwargs={"job_key": "urgent"}, subcloud="a", priority="urgent")
    assert urgent.queue_name == "a.sync.llama3-8b.urgent"

    # When a node of subcloud a starts (one slot)
    start_node(
        argv=[sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1", "--threads", "1"],
        env={"BURROW_TOPOLOGY": str(topology_file), "BURROW_SUBCLOUD": "a"},
    )

    # Then the urgent job is the first it runs
    records = RecordStore(storage)
    first = wait_for(
        lambda: (r := records.get(urgent.message_id)) and r["status"] == "succeeded" and r, 120, "the urgent job"
    )
    started = first["attempts"][0]["started_at"]
    samples = [unacked(queue_prefix) for _ in range(3)]
    earlier = [
        job
        for job in storage.list("records/")
        if (r := records.get(job.rsplit("/", 1)[-1][: -len(".json")])) and r["attempts"][0]["started_at"] < started
    ]
    assert earlier == []
    # and, while bulk jobs run, the slot never holds more than one of them
    assert max(samples) <= 1


def test_a_node_never_receives_another_subclouds_job(submitter, start_node, storage, topology_file):
    broker, inference, topology = submitter
    other = inference.send_with_options(kwargs={"job_key": "for-b"}, subcloud="b", priority="urgent")
    mine = inference.send_with_options(kwargs={"job_key": "for-a"}, subcloud="a", priority="test")
    start_node(
        argv=[sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1"],
        env={"BURROW_TOPOLOGY": str(topology_file), "BURROW_SUBCLOUD": "a"},
    )
    records = RecordStore(storage)
    wait_for(lambda: (r := records.get(mine.message_id)) and r["status"] == "succeeded", 60, "subcloud a's job")
    assert records.get(other.message_id) is None
    assert broker.get_queue_message_counts("b.sync.llama3-8b.urgent")[0] == 1


def test_a_job_for_a_queue_that_does_not_exist_is_refused_at_submit(submitter):
    broker, inference, topology = submitter
    with pytest.raises(NoSuchQueue, match="serves no model 'gpt-9'"):
        inference.send_with_options(kwargs={"job_key": "x"}, subcloud="a", model="gpt-9")
    with pytest.raises(NoSuchQueue, match="no subcloud 'mars'"):
        inference.send_with_options(kwargs={"job_key": "x"}, subcloud="mars")
    # in the file but never applied: refused by the broker (mandatory publish), not published into the void
    with pytest.raises(NoSuchQueue, match="not on the broker"):
        inference.send_with_options(kwargs={"job_key": "x"}, subcloud="c")


def test_topology_apply_is_idempotent_and_show_tells_what_is_missing(amqp_url, node_env, queue_prefix, tmp_path):
    from tests.test_cli import burrow

    path = tmp_path / "t.toml"
    path.write_text('job_types = ["sync"]\npriorities = ["urgent", "bulk"]\n[subclouds.zz]\nmodels = ["m1"]\n')
    try:
        before = burrow("topology", "show", str(path), env=node_env)
        assert before.returncode == 0 and before.stdout.count("MISSING") == 2
        for _ in range(2):
            applied = burrow("topology", "apply", str(path), env=node_env)
            assert applied.returncode == 0 and "2 queue(s)" in applied.stdout
        after = burrow("topology", "show", str(path), env=node_env)
        assert "MISSING" not in after.stdout and f"{queue_prefix}zz.sync.m1.urgent" in after.stdout
        bad = burrow("topology", "show", str(tmp_path / "none.toml"), env=node_env)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot read" in bad.stderr
    finally:
        delete_namespace(amqp_url, queue_prefix, ["zz.sync.m1.urgent", "zz.sync.m1.bulk"])
