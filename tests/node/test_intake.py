"""A worker whose storage fails takes no job until it answers again (``node/broker/intake.py``)."""

from __future__ import annotations

import pytest
from dramatiq import Message

from cloud.registry import NodeRegistry
from node.broker import QuorumRabbitmqBroker
from node.broker.intake import Intake
from node.contract.job_options import JobOptions
from node.contract.queues import wait_bucket_ms
from node.contract.topology import load_topology
from node.storage import open_storage
from node.storage.records import RecordStore
from tests.conftest import delete_namespace, send, wait_for
from tests.s3_proxy import S3Proxy


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_intake_pauses_after_a_failure_then_lets_one_test_job_through_and_doubles_the_pause():
    clock = FakeClock()
    intake = Intake(min_pause_s=1.0, max_pause_s=4.0, clock=clock)
    assert intake.may_take() and not intake.closed
    intake.took()  # (while open, taking changes nothing)
    assert intake.may_take()

    intake.failed(OSError("refused"))
    assert intake.closed and not intake.may_take()
    clock.now += 1.0
    assert intake.may_take() and intake.may_take()  # the pause is over: until a job is taken
    intake.took()
    assert not intake.may_take()  # the test job is out: nothing more

    intake.failed(OSError("refused"))  # it failed too: twice as long
    clock.now += 1.5
    assert not intake.may_take()
    clock.now += 0.5
    assert intake.may_take()
    intake.took()
    intake.failed(OSError("refused"))
    intake.took()
    intake.failed(OSError("refused"))  # 8 s, capped at 4
    clock.now += 4.0
    assert intake.may_take()

    intake.took()
    clock.now += 4.0  # a test job that never reported (dead-lettered before it started): another one
    assert intake.may_take()
    intake.took()
    intake.worked()
    assert intake.may_take() and not intake.closed
    intake.failed(OSError("again"))  # a new outage starts from the shortest pause
    clock.now += 1.0
    assert intake.may_take()


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("consumer", ["subscription", "priority"])
def test_a_node_whose_storage_refuses_it_leaves_the_queue_alone_and_takes_it_all_once_storage_answers(
    consumer, amqp_url, broker, queue_prefix, s3_endpoint, s3_bucket, start_node, tmp_path
):
    # Given a running node whose S3 endpoint then starts refusing it (credentials revoked, say): a node
    # subscribed to its queue, or (with a topology) one polling its priority queues
    proxy = S3Proxy(s3_endpoint)
    env = {
        "BURROW_STORAGE_URL": f"s3://{s3_bucket}",
        "BURROW_S3_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "BURROW_NODE_HEARTBEAT_S": "1",
    }
    queue, actor, topology = "tests", "counted", None
    if consumer == "priority":
        (tmp_path / "topology.toml").write_text('job_types = ["sync"]\n[subclouds.public]\nmodels = ["llama3-8b"]\n')
        topology = load_topology(tmp_path / "topology.toml")
        env["BURROW_TOPOLOGY"] = str(tmp_path / "topology.toml")
        broker = QuorumRabbitmqBroker(url=amqp_url, queue_prefix=queue_prefix, topology=topology)
        for name in topology.queue_names():
            broker.declare_queue(name, ensure=True)
        queue, actor = "public.sync.llama3-8b.bulk", "inference"
    try:
        node = start_node("--processes", "1", env=env)
        wait_for(lambda: "Worker process is ready" in node.output(), 60, "the node to start")
        proxy.refusing = True

        # When 40 jobs arrive while it refuses
        jobs = [f"refused-{i}" for i in range(40)]
        for job_id in jobs:
            options = JobOptions(job_id=job_id).to_options()
            broker.enqueue(
                Message(
                    queue_name=queue, actor_name=actor, args=(), kwargs={"job_key": job_id}, options={"job": options}
                )
            )

        # Then it tries one job per pause (1, 2, 4 s) and leaves the rest in the queue
        wait_for(lambda: proxy.denied >= 4, 90, "four refused reads")
        if consumer == "subscription":  # and its heartbeat says so (it beats every second here)
            registry = NodeRegistry(broker.parameters, queue_prefix, refresh_s=0)
            wait_for(lambda: (v := registry.nodes().get("test-node")) and v.storage_failing, 60, "the beat")
        ready = broker.get_queue_message_counts(queue)[0]  # (read while it still refuses)
        proxy.refusing = False
        first = proxy.denied_at[:4]
        gaps = [first[i + 1] - first[i] for i in range(3)]
        assert [round(gap, 1) >= pause for gap, pause in zip(gaps, (1, 2, 4), strict=True)] == [True] * 3, gaps
        assert ready >= len(jobs) - 5, f"the node took {len(jobs) - ready} jobs it could not start"

        # And once storage answers it runs them all; the few it tried wait to be offered again, none lost
        records = RecordStore(open_storage(f"s3://{s3_bucket}", endpoint_url=s3_endpoint))
        waiting = broker.wait_queue_name(wait_bucket_ms(30_000))

        def accounted() -> bool:
            done = sum(1 for j in jobs if (r := records.get(j)) is not None and r["status"] == "succeeded")
            later = broker.channel.queue_declare(waiting, passive=True).method.message_count
            return done + later == len(jobs) and done >= len(jobs) - 5

        wait_for(accounted, 90, "every job to succeed or wait to be offered again")
        assert node.output().count("Storage fails") >= 4
        assert "Storage answers again: taking jobs." in node.output()
    finally:
        proxy.close()
        if topology is not None:
            broker.close()
            delete_namespace(amqp_url, queue_prefix, topology.queue_names())


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_consumer_paused_for_its_storage_takes_nothing_more_while_it_still_holds_a_delivery(broker):
    # Given a prefetch-1 consumer holding a delivery whose job is still ending, and two more jobs queued
    for i in range(3):
        send(broker, "tests", "tracked", job_key=f"held-{i}")
    consumer = broker.consume("tests", prefetch=1, timeout=50)
    held = wait_for(lambda: next(consumer), 10, "a delivery", interval_s=0)

    # When its storage fails (it pauses), then answers again while that delivery is still held
    broker.intake.failed(OSError("down"), writing=True)
    assert next(consumer) is None
    broker.intake.worked(writing=True)

    # Then it takes nothing beside it (a new subscription's own prefetch window would bring a second job)
    assert [next(consumer) for _ in range(20)] == [None] * 20
    # and once it is settled, the consumer takes the next job
    consumer.ack(held)
    following = wait_for(lambda: next(consumer), 10, "the next delivery", interval_s=0)
    assert following.message_id != held.message_id
    consumer.ack(following)
    consumer.close()
