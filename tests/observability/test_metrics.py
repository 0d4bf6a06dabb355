"""Metrics of a live node through its Prometheus endpoint (found by file-based discovery, as Prometheus finds
it): outcomes and decisions counted with bounded labels; a SIGKILLed worker's endpoint is replaced, not
doubled."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.storage.records import RecordStore
from tests.conftest import send, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


def targets(state: Path, pattern: str = "cpu-*.json") -> list[str]:
    """The scrape targets discovery names (by default the workers', not the supervisor's ``node.json``)."""
    found = []
    for path in sorted((state / "metrics").glob(pattern)):
        for group in json.loads(path.read_text()):
            found += group["targets"]
    return found


def scrape(target: str) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_a_node_exports_job_metrics_and_a_killed_worker_leaves_no_stale_endpoint(
    broker, storage, start_node, tmp_path, node_env
):
    # Given `burrow node` with one slot and the Prometheus exporter on
    state = tmp_path / "state"
    start_node(env={"OTEL_METRICS_EXPORTER": "prometheus", "BURROW_CPU_SLOTS": "1"})
    [first] = wait_for(lambda: targets(state), 60, "the worker's discovery file")

    # When three jobs succeed and one fails on every run (1 + max_failures=1 runs, then given up)
    ok = [send(broker, "tests", "counted", job_key=f"ok-{n}") for n in range(3)]
    bad = send(broker, "tests", "fails_on_node", job_key="bad", bad_node="*")
    records = RecordStore(storage)
    for message in ok:
        wait_for(lambda m=message: (records.get(m.message_id) or {}).get("status") == "succeeded", 60, "successes")
    wait_for(lambda: len((records.get(bad.message_id) or {}).get("attempts", [])) == 2, 60, "two failed runs")

    # Then the endpoint counts them by outcome, actor and queue, with no job id in any label
    queue = "tests"  # the logical queue name: the same on every deployment
    samples = wait_for(
        lambda: (s := scrape(first)) and value(s, "burrow_attempts_total", outcome="failed") == 2 and s,
        60,
        "the failed attempts in the metrics",
    )
    assert value(samples, "burrow_attempts_total", actor="counted", outcome="succeeded", queue=queue) == 3
    assert value(samples, "burrow_decisions_total", actor="fails_on_node", action="give_up") == 1
    assert value(samples, "burrow_attempt_duration_seconds_count", actor="counted") == 3
    assert value(samples, "burrow_queue_wait_seconds_count", queue=queue) == 4
    labels = {label for (_, ls) in samples for label, _ in ls}
    assert not labels & {"job_id", "message_id"}
    assert not any(m.message_id in v for (_, ls) in samples for _, v in ls for m in [*ok, bad])

    # And the supervisor reports the node's CPU and memory, and no GPU series on a machine without one
    [node] = targets(state, "node.json")
    resources = scrape(node)
    assert value(resources, "system_memory_limit_bytes") > 0
    assert not any(name.startswith("hw_") for (name, _) in resources)

    # When the worker is SIGKILLed, the supervisor restarts it
    pid = int((state / "metrics" / ".cpu-0.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    [second] = wait_for(lambda: (t := targets(state)) and t != [first] and t, 60, "the new worker's endpoint")

    # Then discovery names only the new endpoint, which counts from zero (nothing doubled); the old one is gone
    assert value(scrape(second), "burrow_attempts_total") == 0
    with pytest.raises(OSError):
        scrape(first)
