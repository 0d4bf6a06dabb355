"""Acceptance: a 3-node RabbitMQ cluster loses the node that leads the work queue mid-run (private nodes on
loopback, never the shared broker). Nodes, router and submitter list every cluster node in ``AMQP_URL`` and
fail over to the survivors: no job is lost, none succeeds twice, and the router still places and quarantines
failed jobs. The stall is printed."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from node.broker import QuorumRabbitmqBroker
from node.storage.records import RecordStore
from tests.cloud.test_router import FAST, NODE_ARGV, ROUTER_ARGV
from tests.conftest import job_message, wait_for
from tests.rabbitmq_node import RABBITMQ_SERVER, PrivateCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not Path(RABBITMQ_SERVER).exists() and shutil.which("rabbitmq-server") is None:
        pytest.fail("rabbitmq-server is not installed: the cluster test needs private nodes", pytrace=False)
    cluster = PrivateCluster(tmp_path_factory.mktemp("cluster"), size=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.discard()  # its files are thrown away: no clean shutdown needed


def _events(storage, prefix: str) -> list[float]:
    return sorted(json.loads(storage.get(key)[0])["time"] for key in storage.list(prefix))


def test_losing_the_leader_of_the_work_queue_loses_no_job_and_runs_none_twice_to_success(
    cluster, queue_prefix, storage, start_node, tmp_path, capsys
):
    # Given two nodes and a router on a 3-node cluster, every client listing all three nodes
    amqp_url = ";".join(cluster.urls)
    # (the work queue declared first, through the first node: its leader is the node its declarer is on)
    declarer = QuorumRabbitmqBroker(url=cluster.urls[0], queue_prefix=queue_prefix)
    declarer.declare_queue("tests", ensure=True)
    declarer.close()
    submitter = QuorumRabbitmqBroker(url=amqp_url, queue_prefix=queue_prefix)
    records = RecordStore(storage)

    # (the product's heartbeat interval, not the router tests' 2 s: a node counts as live for three of them,
    # and when a broker node goes, the registry stream's leader may go with it — its heartbeats can then pause
    # for longer than 6 s on a loaded machine, and the router would rightly find no live node for a job)
    fast = {**FAST, "BURROW_NODE_HEARTBEAT_S": "10"}

    def start(name: str) -> None:
        env = {**fast, "AMQP_URL": amqp_url, "BURROW_NODE_ID": name, "BURROW_STATE_DIR": str(tmp_path / name)}
        start_node(argv=NODE_ARGV, env=env)

    # (before the stop, the router places a job: node B is busy, so a job that fails on node A goes to B
    # by the router. The connections the router opened for that lead to the node that goes away and must
    # be replaced; one router thread, so it is that thread which handles the jobs after the stop)
    release = tmp_path / "release-b"
    start("node-b")
    submitter.enqueue(job_message("tests", "holds_slot", "blocker", job_key="blocker", release_file=str(release)))
    wait_for(lambda: list(storage.list("runs/blocker/")), 60, "node B to be busy")
    start("node-a")
    start_node(argv=[*ROUTER_ARGV[:-1], "1"], env={**fast, "AMQP_URL": amqp_url})
    quick = {"min_backoff_s": 0.1, "max_backoff_s": 0.1}
    submitter.enqueue(job_message("tests", "fails_on_node", "early", job_key="early", bad_node="node-a", options=quick))

    def placed() -> bool:
        return any(r["action"] == "dispatch" for r in (records.get("early") or {}).get("routing", []))

    wait_for(placed, 90, "the router to place a job before the stop")
    release.touch()

    keys = [f"job-{i:02d}" for i in range(16)]

    def submit(batch: list[str]) -> None:
        for key in batch:
            if key.endswith(("3", "7")):  # these fail on node A: the router sends them to node B
                submitter.enqueue(job_message("tests", "fails_on_node", key, job_key=key, bad_node="node-a"))
            else:  # checkpointing jobs
                submitter.enqueue(job_message("tests", "runs_long", key, job_key=key, steps=4, step_s=0.25))

    submit(keys[:8])
    wait_for(lambda: len(list(storage.list("runs/job-"))) >= 3, 90, "the first jobs to run")

    # When the node that leads the work queue stops mid-run: the first one listed, which clients try first
    leader = cluster.leader_of(queue_prefix + "tests")
    assert leader is cluster.nodes[0]
    stopped_at = time.time()
    leader.stop()
    submit(keys[8:])  # the submitter fails over too
    # (and a job that fails on every node: only the router can place it again, then quarantine it)
    submitter.enqueue(job_message("tests", "fails_on_node", "poison", job_key="poison", bad_node="*"))

    # Then every job succeeds, exactly once, and nothing is left in the queue
    keys = ["blocker", "early", *keys]

    def succeeded() -> list[str]:
        return [k for k in keys if (records.get(k) or {}).get("status") == "succeeded"]

    try:
        wait_for(lambda: len(succeeded()) == len(keys), 180, "every job to succeed")
    except AssertionError:
        # Where the missing jobs are: their records, and every queue of the test's namespace on a survivor
        # (seen once in six runs: a re-dispatch after the failover reached no node; see the notes).
        for key in sorted(set(keys) - set(succeeded())):
            print(key, json.dumps(records.get(key), default=str)[:1500])
        survivor = next(node for node in cluster.nodes if node is not leader)
        listed = survivor.ctl("list_queues", "name", "type", "messages_ready", "messages_unacknowledged", "leader")
        print("\n".join(line for line in listed.splitlines() if queue_prefix in line))
        raise
    for key in keys:
        outcomes = [a["outcome"] for a in records.get(key)["attempts"]]
        assert outcomes.count("succeeded") == 1, (key, outcomes)
    # and the router, failed over too, re-dispatched the failing job to the other node, then quarantined it
    wait_for(lambda: (records.get("poison") or {}).get("status") == "quarantined", 120, "the poison job quarantined")
    assert {json.loads(storage.get(k)[0])["node"] for k in storage.list("runs/poison/")} == {"node-a", "node-b"}
    wait_for(lambda: submitter.get_queue_message_counts("tests") == (0, 0, 0), 60, "an empty work queue")
    submitter.close()

    # (the stall: from the leader's stop to the next job that starts)
    starts = [t for t in _events(storage, "runs/") if t > stopped_at]
    with capsys.disabled():
        stall_s = starts[0] - stopped_at
        print(f"\n[cluster failover] leader {leader.nodename} stopped; work resumed after {stall_s:.1f}s")
