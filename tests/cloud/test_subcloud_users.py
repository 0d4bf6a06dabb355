"""Acceptance: per-subcloud broker users. ``burrow topology apply --users`` creates a user per subcloud on a
private RabbitMQ (with its management plugin); a real node running with subcloud a's user runs a's jobs, and
the broker refuses that user when it tries to take a job from subcloud b's queue."""

from __future__ import annotations

import re
import subprocess
import sys
from urllib.parse import quote

import pika
import pytest

from cloud.submit import Client
from node.settings import Settings
from tests.conftest import ROOT
from tests.rabbitmq_node import PrivateRabbitmq, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

NODE_ARGV = [sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1", "--threads", "1"]
TOPOLOGY = """
priorities = ["urgent", "bulk"]
job_types = ["batch"]
[subclouds.a]
models = ["any"]
[subclouds.b]
models = ["any"]
"""


@pytest.fixture
def private(tmp_path):
    management = free_port()
    node = PrivateRabbitmq(
        tmp_path / "rabbit", config=f"management.tcp.port = {management}\n", plugins=("rabbitmq_management",)
    )
    node.start(timeout_s=120)
    node.management_url = f"http://guest:guest@127.0.0.1:{management}"
    yield node
    node.discard()  # its files are thrown away: no clean shutdown needed


def test_a_subclouds_node_runs_its_jobs_and_is_refused_the_other_subclouds_queue(
    private, tmp_path, node_env, start_node
):
    topology = tmp_path / "topology.toml"
    topology.write_text(TOPOLOGY)
    env = {**node_env, "AMQP_URL": private.url, "BURROW_TOPOLOGY": str(topology)}
    env["BURROW_RABBITMQ_MANAGEMENT_URL"] = private.management_url
    apply = [sys.executable, "-m", "cloud.cli", "topology", "apply", "--users"]
    done = subprocess.run(apply, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    prefix = node_env["BURROW_QUEUE_PREFIX"]
    passwords = dict(re.findall(r"user (\S+) created for subcloud \S+; password \(shown once\): (\S+)", done.stdout))
    assert set(passwords) == {f"{prefix}node-a", f"{prefix}node-b"}
    # Applying again keeps the users (no new password) and sets the same permissions.
    again = subprocess.run(apply, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "password" not in again.stdout and again.stdout.count("permissions set") == 2

    user, password = f"{prefix}node-a", passwords[f"{prefix}node-a"]
    node_url = f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{private.port}/%2F"
    # A real node of subcloud a, with a's user only, boots and runs a's job.
    node = start_node(
        argv=NODE_ARGV, env={**env, "AMQP_URL": node_url, "BURROW_SUBCLOUD": "a", "BURROW_CPU_SLOTS": "1"}
    )
    client = Client(Settings.from_env(env))
    try:
        handle = client.submit("counted", job_key="in-a", subcloud="a", job_type="batch")
        assert handle.wait(timeout=120)["status"] == "succeeded"
        # (with everything a node needs allowed: its heartbeats and its cancel-broadcast queue too)
        assert "not received" not in node.output() and "not sent" not in node.output(), node.output()
        # The same user taking from b's queue: refused by the broker.
        connection = pika.BlockingConnection(pika.URLParameters(node_url))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            connection.channel().basic_get(f"{prefix}b.batch.any.bulk")
        assert refused.value.reply_code == 403 and "ACCESS_REFUSED" in refused.value.reply_text
        # … and its own queue is fine.
        assert connection.channel().basic_get(f"{prefix}a.batch.any.bulk")[0] is None
        connection.close()
    finally:
        client.close()
