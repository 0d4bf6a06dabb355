"""Acceptance: a broker restart mid-run loses nothing (on a private RabbitMQ node, never the shared one)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from node.broker import QuorumRabbitmqBroker
from tests.conftest import send, wait_for
from tests.rabbitmq_node import RABBITMQ_SERVER, PrivateRabbitmq

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def private_rabbitmq(tmp_path_factory):
    if not Path(RABBITMQ_SERVER).exists() and shutil.which("rabbitmq-server") is None:
        pytest.fail("rabbitmq-server is not installed: the broker-restart test needs a private node", pytrace=False)
    # A short base path: Erlang limits the length of some of the node's file names.
    node = PrivateRabbitmq(tmp_path_factory.mktemp("rmq"))
    node.start()
    yield node
    node.discard()  # its files are thrown away: no clean shutdown needed


def test_workers_reconnect_after_broker_restart_and_every_job_completes(
    private_rabbitmq, queue_prefix, storage, start_node
):
    # Given a node on a private broker, working through a batch of jobs
    broker = QuorumRabbitmqBroker(url=private_rabbitmq.url, queue_prefix=queue_prefix)
    start_node(env={"AMQP_URL": private_rabbitmq.url})
    keys = [f"job-{i}" for i in range(6)]
    for key in keys:
        send(broker, "tests", "tracked", job_key=key, work_s=1.0)
    broker.close()
    wait_for(lambda: list(storage.list("runs/")), 60, "the first job to start")

    # When the broker restarts mid-run
    private_rabbitmq.stop()
    assert sum(1 for k in keys if storage.head(f"results/{k}.json")) < len(keys), "the batch finished too soon"
    private_rabbitmq.start()

    # Then the workers reconnect and every job completes, with nothing left behind
    wait_for(lambda: all(storage.head(f"results/{k}.json") for k in keys), 150, "all jobs after the restart")
    broker = QuorumRabbitmqBroker(url=private_rabbitmq.url, queue_prefix=queue_prefix)
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)
    broker.close()
