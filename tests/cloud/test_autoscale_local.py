"""Acceptance: the local autoscaler grows a pool of real ``burrow node`` processes from 0 as a backlog appears,
shrinks it while a job runs without losing the job (SIGTERM: it checkpoints and hands back), and returns to
its minimum once the queues drain — against the real broker, with the node registry for running jobs.

The autoscaler's clock is the test's: its scale-down delay passes when the test says so, never by waiting."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cloud.autoscale.config import parse_config
from cloud.autoscale.local import LocalProvider
from cloud.autoscale.provider import ProviderError
from cloud.autoscale.run import Autoscaler, broker_depths
from cloud.registry import NodeRegistry
from cloud.submit import Client
from node.settings import Settings
from node.supervisor.process import EXIT_BOOT_FAILED
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def config(max_replicas: int):
    return parse_config(
        {
            "groups": {
                "pool": {
                    "queues": ["training"],
                    "provider": "local",
                    "jobs_per_replica": 1,
                    "min_replicas": 0,
                    "max_replicas": max_replicas,
                    "scale_down_delay_s": 60,
                    "hysteresis": 0,
                }
            }
        }
    )


def test_the_local_pool_grows_from_zero_shrinks_without_losing_a_job_and_returns_to_min(node_env, tmp_path: Path):
    client = Client(Settings.from_env(node_env))
    env = {**node_env, "BURROW_CPU_SLOTS": "1", "BURROW_NODE_HEARTBEAT_S": "0.5", "BURROW_GRACE_S": "20"}
    pool = LocalProvider("pool", tmp_path / "pool", [sys.executable, "-m", "cloud.cli", "node"], env)
    registry = NodeRegistry(client.broker.parameters, node_env["BURROW_QUEUE_PREFIX"], window_s=600, refresh_s=0)
    now = [0.0]

    def scaler(max_replicas: int) -> Autoscaler:
        cfg = config(max_replicas)
        depth = broker_depths(client.broker, registry, cfg)
        return Autoscaler(cfg, {"pool": pool}, depth, tmp_path / "state.json", clock=lambda: now[0])

    def running_jobs() -> int:
        return sum(len(view.running) for view in registry.nodes().values() if view.live)

    release = tmp_path / "release"
    try:
        # Nothing queued: nothing started.
        assert [r.decision.replicas for r in scaler(2).round()] == [0]
        assert pool.current() == 0
        # A backlog of three: the pool grows to its max of two at once, each node taking one job.
        jobs = [
            client.submit("train_until_stopped", seed=n, chunk=50, extra_steps=100, until_file=str(release))
            for n in range(3)
        ]
        (result,) = scaler(2).round()
        assert (result.depth, result.current, result.decision.replicas) == (3, 0, 2)
        assert pool.current() == 2
        wait_for(lambda: running_jobs() == 2, 120, "both nodes running a job (heartbeats)")
        # Demand (2 running + 1 queued) is steady for the pool: no change, however long.
        now[0] += 3600
        assert scaler(2).round()[0].decision.replicas == 2
        # The pool's max drops to one while both run: one busy node is stopped (SIGTERM), its job hands back.
        (shrunk,) = scaler(1).round()
        assert (shrunk.current, shrunk.decision.replicas) == (2, 1)
        assert pool.current() == 1
        wait_for(lambda: len(pool.replicas()) == 1, 120, "the stopped node to exit after its drain")
        # Back to two, the jobs are released and all three finish (the handed-back one resumes from its
        # checkpoint); then the queues are empty and, after the delay, the pool returns to its minimum.
        assert scaler(2).round()[0].decision.replicas == 2
        release.touch()
        for job in jobs:
            assert job.wait(timeout=180)["status"] == "succeeded"
        wait_for(lambda: running_jobs() == 0, 60, "no job running any more")
        now[0] += 1
        assert scaler(2).round()[0].decision.replicas == 2  # low: the delay starts
        now[0] += 61
        (drained,) = scaler(2).round()
        assert (drained.depth, drained.decision.replicas) == (0, 0)
        wait_for(lambda: not pool.replicas(), 120, "every node to exit")
        # Nothing lost: each job succeeded once; the one whose node was stopped mid-run was handed back.
        records = [client.records.get(job.job_id) for job in jobs]
        assert all(r["status"] == "succeeded" for r in records)
        assert [sum(a["outcome"] == "succeeded" for a in r["attempts"]) for r in records] == [1, 1, 1]
        outcomes = [a["outcome"] for r in records for a in r["attempts"]]
        assert outcomes.count("interrupted") == 1, outcomes
        assert "lost" not in outcomes and "crashed" not in outcomes
    finally:
        pool.scale_to(0)
        pool.close(stop=True)
        client.close()


def test_a_replica_that_cannot_boot_is_not_replaced_and_the_group_says_why(tmp_path: Path):
    command = [sys.executable, "-c", f"raise SystemExit({EXIT_BOOT_FAILED})"]  # a node with a bad setting
    pool = LocalProvider("pool", tmp_path / "pool", command, {})
    pool.scale_to(1)
    wait_for(lambda: pool.current() == 0, 60, "the replica to exit")
    with pytest.raises(ProviderError, match=r"replica 0 could not boot .*0\.log"):
        pool.scale_to(1)
    assert pool.current() == 0 and not pool._children  # nothing started again
    pool.close()
