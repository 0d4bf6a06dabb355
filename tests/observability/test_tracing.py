"""Acceptance: one trace from submit through a failed attempt, the router's re-dispatch and the successful
attempt on another node — real processes exporting OTLP as in production, to a receiver in the test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from node.storage.records import RecordStore
from tests.cloud.test_router import FAST, NODE_ARGV, ROUTER_ARGV, runs_by_node
from tests.conftest import ROOT, send, wait_for
from tests.observability.otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

CONSUMER, PRODUCER = 5, 4  # OTLP span kinds


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def test_submit_failed_attempt_redispatch_and_success_are_one_trace(
    broker, storage, start_node, tmp_path, node_env, otlp
):
    # Given nodes A and B and a router, all exporting traces over OTLP; B is busy first, so A takes the job
    telemetry = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "200", **FAST}
    release = tmp_path / "release-b"

    def node(name: str):
        env = {**telemetry, "BURROW_NODE_ID": name, "BURROW_STATE_DIR": str(tmp_path / f"state-{name}")}
        return start_node(argv=NODE_ARGV, env=env)

    node("node-b")
    send(broker, "tests", "holds_slot", job_key="blocker", release_file=str(release))
    wait_for(lambda: runs_by_node(storage, "blocker") == ["node-b"], 60, "node B to be busy")
    node("node-a")
    start_node(argv=ROUTER_ARGV, env=telemetry)

    # When a service submits a job (`burrow submit`, tracing on) that fails on A and succeeds elsewhere
    submitted = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "submit", "fails_on_node", "--kwargs",
         json.dumps({"job_key": "traced", "bad_node": "node-a"})],
        env={**node_env, **telemetry}, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[-1]
    records = RecordStore(storage)
    wait_for(lambda: (records.get(job_id) or {}).get("routing"), 60, "the router's re-dispatch")
    release.touch()
    wait_for(lambda: (records.get(job_id) or {}).get("status") == "succeeded", 60, "success on B")

    # Then the submit span, A's failed attempts, the router's decision and B's success share one trace
    def complete() -> bool:
        spans = otlp.spans_of(job_id)
        return any(s.kind == CONSUMER and not s.error and s.resource.get("burrow.node.id") == "node-b" for s in spans)

    wait_for(complete, 60, "B's attempt span")
    spans = otlp.spans_of(job_id)
    assert len({s.trace_id for s in spans}) == 1, spans
    [submit] = [s for s in spans if s.kind == PRODUCER]
    assert submit.service == "burrow-submit" and submit.parent_id == ""
    attempts = [s for s in spans if s.name.startswith("process ")]
    failed = [s for s in attempts if s.error]
    assert failed and all(s.resource.get("burrow.node.id") == "node-a" for s in failed)
    assert all(s.attributes["error.type"] == "RuntimeError" for s in failed)
    [succeeded] = [s for s in attempts if s.attributes.get("burrow.outcome") == "succeeded"]
    # (A also received the job while B was busy and sent it back unrun: those deliveries are spans too)
    assert all("burrow.skipped" in s.attributes for s in attempts if "burrow.outcome" not in s.attributes)
    assert succeeded.resource.get("burrow.node.id") == "node-b"
    assert succeeded.attributes["burrow.outcome"] == "succeeded"
    assert all(s.parent_id == submit.span_id for s in attempts)  # every attempt is the submit's child
    assert {s.attributes["messaging.system"] for s in attempts} == {"rabbitmq"}
    routed = [s for s in spans if s.service == "burrow-router"]
    assert any(s.attributes["burrow.route.action"] == "dispatch" for s in routed)
