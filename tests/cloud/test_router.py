"""Acceptance: the router re-dispatches failed jobs to other live nodes, quarantines what it cannot place,
and hands each failure on exactly once however often it is killed (real nodes, real router, real broker)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dramatiq
import pika
import pytest
from dramatiq import Message

from cloud.registry import NodeRegistry
from cloud.routing.quarantine import Quarantine
from node.broker import QuorumRabbitmqBroker
from node.contract.topology import load_topology
from node.middleware import JobSubmission
from node.storage.records import RecordStore
from tests.conftest import ROOT, delete_namespace, send, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

NODE_ARGV = [sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1", "--threads", "1"]
ROUTER_ARGV = [sys.executable, "-m", "dramatiq", "cloud.router", "--processes", "1", "--threads", "2"]
FAST = {
    # Live for 3 heartbeats: 6 s of slack, so a loaded machine that delays a beat does not lose a node.
    "BURROW_NODE_HEARTBEAT_S": "2",
    "BURROW_ROUTER_COOLDOWN_S": "0.1",
    "BURROW_ROUTER_AVOID_DELAY_S": "0.1",
    "BURROW_CPU_SLOTS": "1",
}


def node(start_node, tmp_path: Path, name: str):
    env = {**FAST, "BURROW_NODE_ID": name, "BURROW_STATE_DIR": str(tmp_path / f"state-{name}")}
    return start_node(argv=NODE_ARGV, env=env)


def wait_live(amqp_url: str, prefix: str, *names: str) -> None:
    registry = NodeRegistry(pika.URLParameters(amqp_url), prefix, refresh_s=0)
    wait_for(lambda: {v.node for v in registry.live_nodes()} >= set(names), 60, f"{names} in the registry")


def router(start_node, **env: str):
    return start_node(argv=ROUTER_ARGV, env={**FAST, **env})


def runs_by_node(storage, job_key: str) -> list[str]:
    traces = [json.loads(storage.get(key)[0]) for key in storage.list(f"runs/{job_key}/")]
    return [trace["node"] for trace in sorted(traces, key=lambda t: t["time"])]


def burrow(node_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", *args], env=node_env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_a_job_failing_on_node_a_runs_on_node_b_and_never_again_on_a(
    broker, storage, start_node, tmp_path, node_env, queue_prefix
):
    # Given nodes A and B and a router; B is busy until the test releases it, so A takes the job first
    release = tmp_path / "release-b"
    node(start_node, tmp_path, "node-b")
    send(broker, "tests", "holds_slot", job_key="blocker", release_file=str(release))
    wait_for(lambda: runs_by_node(storage, "blocker") == ["node-b"], 60, "node B to be busy")
    node(start_node, tmp_path, "node-a")
    router(start_node)

    # (`burrow queues` shows B's running job and both slots serving the queue, through the registry)
    def tests_row() -> list[str]:
        rows = burrow(node_env, "queues").stdout.splitlines()
        return next((line.split()[1:] for line in rows if line.split()[:1] == [queue_prefix + "tests"]), [])

    wait_for(lambda: tests_row()[:3] == ["0", "1", "2"], 60, "one running job and two slots in `burrow queues`")
    message = send(broker, "tests", "fails_on_node", job_key="picky", bad_node="node-a")

    # When A has spent the job's failure budget (1 + max_failures=1 runs) and the router re-dispatched it,
    # avoiding A: A keeps receiving it (B is busy) and hands it back to the router each time
    wait_for(lambda: len(runs_by_node(storage, "picky")) == 2, 60, "two failed runs on A")
    records = RecordStore(storage)
    wait_for(lambda: (records.get(message.message_id) or {}).get("routing"), 60, "the router's decision")
    release.touch()

    # Then it succeeds on B, and never ran on A again
    wait_for(lambda: (records.get(message.message_id) or {}).get("status") == "succeeded", 60, "success on B")
    assert runs_by_node(storage, "picky") == ["node-a", "node-a", "node-b"]
    record = records.get(message.message_id)
    assert [r["action"] for r in record["routing"]] == ["dispatch"]
    assert record["routing"][0]["route"]["avoid_nodes"] == ["node-a"]


def test_with_only_node_a_alive_the_job_is_quarantined_and_an_operator_requeue_runs_it_on_b(
    broker, storage, start_node, tmp_path, node_env
):
    # Given only node A and a router
    node_a = node(start_node, tmp_path, "node-a")
    router(start_node)
    message = send(broker, "tests", "fails_on_node", job_key="stuck", bad_node="node-a")

    # When the job has failed on A, the router finds no other live node to place it on
    quarantine = Quarantine(storage)
    wait_for(lambda: quarantine.get(message.message_id), 90, "the job in quarantine")

    # Then it is quarantined with its history, which `burrow quarantine` shows
    assert RecordStore(storage).get(message.message_id)["status"] == "quarantined"
    listed = burrow(node_env, "quarantine", "list")
    assert listed.returncode == 0 and message.message_id in listed.stdout and "no live node" in listed.stdout
    shown = burrow(node_env, "quarantine", "show", message.message_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("node node-a") == 2 and "failed" in shown.stdout

    # When A is gone, a healthy node B appears and the operator requeues the job
    node_a.stop()
    node(start_node, tmp_path, "node-b")
    wait_live(node_env["AMQP_URL"], node_env["BURROW_QUEUE_PREFIX"], "node-b")
    # (`burrow nodes` lists both: B live, A stopped cleanly)
    listing = burrow(node_env, "nodes").stdout.splitlines()
    assert any(line.split()[:2] == ["node-b", "up"] for line in listing), listing
    assert any(line.split()[:2] == ["node-a", "stopped"] for line in listing), listing
    requeued = burrow(node_env, "quarantine", "requeue", message.message_id)
    assert requeued.returncode == 0, requeued.stderr

    # Then it runs on B and succeeds, and the quarantine entry is gone
    records = RecordStore(storage)
    wait_for(lambda: (records.get(message.message_id) or {}).get("status") == "succeeded", 90, "success on B")
    assert runs_by_node(storage, "stuck") == ["node-a", "node-a", "node-b"]
    assert quarantine.get(message.message_id) is None
    # And a requeue of something not quarantined is a one-line error
    again = burrow(node_env, "quarantine", "requeue", message.message_id)
    assert again.returncode == 2 and again.stderr.startswith("burrow: error: nothing quarantined")


def fails_everywhere(broker, job_key: str, **options: object):
    """A job that fails wherever it runs, giving up after its first failure on a node (max_failures=0)."""
    return broker.enqueue(
        Message(
            queue_name="tests",
            actor_name="fails_on_node",
            args=(),
            kwargs={"job_key": job_key, "bad_node": "*"},
            options={"max_failures": 0, **options},
        )
    )


def test_a_router_killed_again_and_again_hands_each_failure_on_exactly_once(
    amqp_url, queue_prefix, broker, storage, start_node, tmp_path
):
    # Given nodes A and B and jobs that fail everywhere, once per node: each runs on one node, is
    # re-dispatched once (avoiding it), runs on the other, then is quarantined. A second copy of a
    # re-dispatch would run a third time.
    node(start_node, tmp_path, "node-a")
    node(start_node, tmp_path, "node-b")
    wait_live(amqp_url, queue_prefix, "node-a", "node-b")
    messages = [fails_everywhere(broker, f"doomed-{i}") for i in range(12)]
    records, quarantine = RecordStore(storage), Quarantine(storage)

    def decisions() -> int:
        return sum(len((records.get(m.message_id) or {}).get("routing", [])) for m in messages)

    def all_quarantined() -> bool:
        return all(quarantine.get(m.message_id) for m in messages)

    # When the router is SIGKILLed each time it has decided something, for as long as there is work left
    kills = 0
    while not all_quarantined() and kills < 12:
        seen = decisions()
        current = router(start_node)
        wait_for(lambda seen=seen: decisions() > seen or all_quarantined(), 90, "the router to decide something")
        os.killpg(current.process.pid, signal.SIGKILL)
        current.process.wait()
        kills += 1
    router(start_node)  # one that is left to finish

    # Then every job ends quarantined after exactly one re-dispatch: none lost, none dispatched twice
    wait_for(all_quarantined, 120, "every job in quarantine")
    assert kills >= 1  # how many depends on the machine: each kill lands right after a decision
    for m in messages:
        record = records.get(m.message_id)
        assert [r["action"] for r in record["routing"]] == ["dispatch", "quarantine"], record["routing"]
        nodes = runs_by_node(storage, m.kwargs["job_key"])
        assert sorted(nodes) == ["node-a", "node-b"], nodes
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)
    wait_for(lambda: broker.get_queue_message_counts("failed-jobs") == (0, 0, 0), 60, "failed-jobs drained")


def test_an_expired_job_is_quarantined_never_re_dispatched(
    amqp_url, queue_prefix, broker, storage, start_node, tmp_path
):
    # Given nodes A and B, a router, and a job that fails on A and expires before it could run again
    node(start_node, tmp_path, "node-a")
    node(start_node, tmp_path, "node-b")
    wait_live(amqp_url, queue_prefix, "node-a", "node-b")
    router(start_node, BURROW_ROUTER_COOLDOWN_S="3600")  # any re-dispatch would start after its expiry
    message = broker.enqueue(
        Message(
            queue_name="tests",
            actor_name="fails_on_node",
            args=(),
            kwargs={"job_key": "late", "bad_node": "*"},
            options={"ttl_s": 600},
        )
    )

    # Then after its failures it lands in quarantine as expired, and runs nowhere else
    wait_for(lambda: Quarantine(storage).get(message.message_id), 90, "the job in quarantine")
    record = RecordStore(storage).get(message.message_id)
    assert [r["action"] for r in record["routing"]] == ["quarantine"]
    assert "expired" in record["routing"][0]["reason"]
    assert len(runs_by_node(storage, "late")) == 2


FALLBACK_TOML = """
job_types = ["batch"]
priorities = ["bulk"]

[subclouds.acme]
models = ["any"]
fallback = ["public"]

[subclouds.public]
models = ["any"]
"""


@contextlib.contextmanager
def fallback_pools(amqp_url: str, queue_prefix: str, start_node, tmp_path: Path):
    """A topology where acme falls back to public, node A serving acme, node P serving public, and a router:
    yields the submitting broker and P."""
    topology_file = tmp_path / "topology.toml"
    topology_file.write_text(FALLBACK_TOML)
    topology = load_topology(topology_file)
    submitter = QuorumRabbitmqBroker(
        url=amqp_url, queue_prefix=queue_prefix, middleware=[JobSubmission()], topology=topology
    )
    started = []
    try:
        for name in topology.queue_names():
            submitter.declare_queue(name, ensure=True)
        dramatiq.Actor(
            lambda job_key, bad_node="": None,
            broker=submitter,
            actor_name="fails_on_node",
            queue_name="tests",
            priority=0,
            options={"subcloud": "acme"},
        )
        env = {"BURROW_TOPOLOGY": str(topology_file)}
        a_env = {"BURROW_NODE_ID": "node-a", "BURROW_SUBCLOUD": "acme", "BURROW_STATE_DIR": str(tmp_path / "a")}
        p_env = {"BURROW_NODE_ID": "node-p", "BURROW_SUBCLOUD": "public", "BURROW_STATE_DIR": str(tmp_path / "p")}
        started.append(start_node(argv=NODE_ARGV, env={**FAST, **env, **a_env}))
        started.append(start_node(argv=NODE_ARGV, env={**FAST, **env, **p_env}))
        wait_live(amqp_url, queue_prefix, "node-a", "node-p")
        started.append(router(start_node, **env))
        yield submitter, started[1]
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.process.pid, signal.SIGCONT)
            process.stop()  # first: a running node declares its queues again when they vanish
        submitter.close()
        delete_namespace(amqp_url, queue_prefix, topology.queue_names())


def test_a_job_failing_in_its_subcloud_falls_back_to_the_next_pool(
    amqp_url, queue_prefix, storage, start_node, tmp_path
):
    # Given a topology where acme falls back to public, node A serving acme and node P serving public
    with fallback_pools(amqp_url, queue_prefix, start_node, tmp_path) as (submitter, _):
        # When a job of acme fails on A (its only node there)
        message = submitter.get_actor("fails_on_node").send(job_key="roams", bad_node="node-a")
        assert message.queue_name == "acme.batch.any.bulk"

        # Then the router sends it down the chain to public, where P runs it
        records = RecordStore(storage)
        wait_for(lambda: (records.get(message.message_id) or {}).get("status") == "succeeded", 90, "success on P")
        assert runs_by_node(storage, "roams") == ["node-a", "node-a", "node-p"]
        routing = records.get(message.message_id)["routing"]
        assert [(r["action"], r["queue"]) for r in routing] == [("dispatch", "public.batch.any.bulk")]


def test_a_job_whose_only_taker_went_silent_is_held_for_it_not_quarantined(
    amqp_url, queue_prefix, storage, start_node, tmp_path
):
    # Given acme falling back to public, node A serving acme, node P serving public
    with fallback_pools(amqp_url, queue_prefix, start_node, tmp_path) as (submitter, node_p):
        # When P goes silent without stopping (SIGSTOP: as when a broker node's failover pauses the registry
        # stream, or a node is cut off for a while) and a job of acme fails on A
        os.killpg(node_p.process.pid, signal.SIGSTOP)
        registry = NodeRegistry(pika.URLParameters(amqp_url), queue_prefix, refresh_s=0)
        wait_for(lambda: registry.nodes()["node-p"].state == "silent", 60, "node P silent in the registry")
        message = submitter.get_actor("fails_on_node").send(job_key="waits", bad_node="node-a")

        # Then the router holds it for P instead of quarantining it ("no live node")
        records = RecordStore(storage)

        def routing() -> list[dict]:
            return (records.get(message.message_id) or {}).get("routing", [])

        wait_for(lambda: [r["action"] for r in routing()] == ["hold"], 90, "the router holding the job")
        assert "node-p (silent" in routing()[0]["reason"]
        assert Quarantine(storage).get(message.message_id) is None

        # When P is back, it runs the job
        os.killpg(node_p.process.pid, signal.SIGCONT)
        wait_for(lambda: (records.get(message.message_id) or {}).get("status") == "succeeded", 90, "success on P")
        assert runs_by_node(storage, "waits") == ["node-a", "node-a", "node-p"]
        assert [(r["action"], r["queue"]) for r in routing()] == [
            ("hold", "public.batch.any.bulk"),
            ("dispatch", "public.batch.any.bulk"),
        ]
        assert Quarantine(storage).get(message.message_id) is None


def test_a_malformed_message_ends_in_quarantine_with_its_reason(
    amqp_url, queue_prefix, broker, storage, start_node, tmp_path
):
    # Given a node and a router
    node(start_node, tmp_path, "node-a")
    router(start_node)
    broker.declare_queue("tests", ensure=True)

    # When garbage is published straight to the work queue
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().basic_publish("", queue_prefix + "tests", b"\xffnot a message")
    connection.close()

    # Then the node dead-letters it as malformed, the router quarantines it (unreadable, kept whole)
    quarantine = Quarantine(storage)
    entry = wait_for(lambda: next(quarantine.entries(), None), 90, "the garbage in quarantine")
    assert "malformed" in entry["reason"] and entry["job_id"] is None
    assert base64.b64decode(entry["raw"]) == b"\xffnot a message"
    assert broker.get_queue_message_counts("tests") == (0, 0, 0)


def test_a_job_that_kills_its_process_every_run_ends_in_quarantine_and_the_node_keeps_serving(
    amqp_url, queue_prefix, broker, storage, start_node, tmp_path
):
    # Given one node (under `burrow node`, which restarts dead workers) and a router
    start_node(env={**FAST, "BURROW_NODE_ID": "node-a", "BURROW_STATE_DIR": str(tmp_path / "state-a")})
    wait_live(amqp_url, queue_prefix, "node-a")
    router(start_node)

    # When a job calls os._exit on every run
    message = send(broker, "tests.poison", "crash_always", job_key="loop", how="exit")

    # Then after its failure budget it is quarantined with the reason and every crash recorded
    entry = wait_for(lambda: Quarantine(storage).get(message.message_id), 120, "the crash loop in quarantine")
    assert "crashed 4 times" in entry["reason"] and "no live node" in entry["reason"]
    assert [a["outcome"] for a in entry["attempts"]] == ["crashed"] * 4
    assert {a["node"] for a in entry["attempts"]} == {"node-a"}
    # and the node keeps serving
    send(broker, "tests", "tracked", job_key="after-loop", work_s=0.1)
    wait_for(lambda: storage.head("results/after-loop.json"), 60, "a normal job after the crash loop")
    assert broker.get_queue_message_counts("tests.poison") == (0, 0, 0)


def test_a_record_left_running_by_a_vanished_node_is_closed_as_lost(
    amqp_url, queue_prefix, broker, storage, start_node, tmp_path
):
    # Given a node running a long job whose record says running, and a router
    node_a = node(start_node, tmp_path, "node-a")
    router(start_node)
    message = send(broker, "tests", "holds_slot", job_key="orphan", release_file=str(tmp_path / "never"))
    records = RecordStore(storage)
    wait_for(lambda: (records.get(message.message_id) or {}).get("status") == "running", 60, "the running record")
    # (and a heartbeat that lists the job: the router learns what a node ran from its last word)
    registry = NodeRegistry(pika.URLParameters(amqp_url), queue_prefix, refresh_s=0)
    wait_for(
        lambda: any(message.message_id in view.running for view in registry.live_nodes()),
        60,
        "node A's heartbeat listing the job",
    )

    # When the whole node vanishes (SIGKILL: no goodbye) and nothing else serves the queue
    os.killpg(node_a.process.pid, signal.SIGKILL)

    # Then once the registry shows it silent, its attempt is closed as lost and the job is queued again
    wait_for(lambda: records.get(message.message_id)["status"] == "queued", 60, "the record closed by the router")
    attempt = records.get(message.message_id)["attempts"][-1]
    assert attempt["outcome"] == "lost" and "node-a went silent" in attempt["error"]


def test_a_report_the_broker_dead_lettered_from_failed_jobs_is_handled_again(
    amqp_url, queue_prefix, broker, storage, start_node, tmp_path
):
    # Given node B and a router, and a node's report that routers kept dying on (the broker dead-lettered it)
    node(start_node, tmp_path, "node-b")
    wait_live(amqp_url, queue_prefix, "node-b")
    router(start_node)
    job = Message("tests", "fails_on_node", (), {"job_key": "revived", "bad_node": "node-a"}, {})
    job = job.copy(options={"job": {"job_id": "revived-1", "version": 1}})
    report = Message(
        "failed-jobs",
        "route_failed_job",
        (),
        {
            "kind": "failed",
            "job": job.asdict(),
            "reason": "failed on A",
            "error": None,
            "node": "node-a",
            "attempts": [],
        },
        {},
    )
    broker.dead_letter("failed-jobs", report.encode(), reason="delivery_limit")

    # Then the router handles the report itself again: the job is placed away from A, on B, and succeeds
    records = RecordStore(storage)
    wait_for(lambda: (records.get("revived-1") or {}).get("status") == "succeeded", 60, "the job run on B")
    assert runs_by_node(storage, "revived") == ["node-b"]
    assert records.get("revived-1")["routing"][0]["report"] == report.message_id
