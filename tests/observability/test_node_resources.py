"""Node resources from the supervisor: CPU, memory, each GPU (NVML) and each slot's state, labelled with the
node, once per node. GPUs come from a stand-in ``pynvml`` (``fake_nvml/``) on this GPU-less machine."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from node.supervisor.resources import Gpus, slot_state
from tests.conftest import send, wait_for
from tests.observability.test_metrics import scrape, targets, value

FAKE_NVML = Path(__file__).parent / "fake_nvml"


@pytest.mark.parametrize(
    ("alive", "stopping", "status", "expected"),
    [
        (False, False, {"state": "up", "running": 1}, "down"),
        (True, False, None, "down"),  # no status file yet
        (True, False, {"pid": 1}, "down"),  # slot claimed, still booting
        (True, True, {"state": "up", "running": 0}, "draining"),
        (True, False, {"state": "draining", "running": 1}, "draining"),
        (True, False, {"state": "up", "running": 1}, "busy"),
        (True, False, {"state": "up", "running": 0}, "idle"),
    ],
)
def test_slot_state(alive, stopping, status, expected):
    assert slot_state(alive, stopping, status) == expected


def test_gpu_readings_skip_what_a_device_cannot_report(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_NVML))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    importlib.invalidate_caches()
    first, second = Gpus(["0", "1"]).readings()
    assert (first.slot, first.utilization, first.memory_used, first.power_w) == ("gpu-0", 0.4, 2**30, 250.0)
    assert (second.slot, second.temperature_c, second.power_w) == ("gpu-1", 61.0, None)


def test_no_nvml_means_no_gpu_series(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as without nvidia-ml-py
    assert Gpus(["0"]).readings() == []
    assert Gpus([]).nvml is None  # a CPU node does not even ask


def node_target(state: Path) -> str | None:
    path = state / "metrics" / "node.json"
    try:
        [group] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    assert group["labels"] == {"node": "test-node", "subcloud": "public"}
    return group["targets"][0]


def slot_states(samples) -> dict[str, str]:
    return {dict(ls)["slot"]: dict(ls)["state"] for (n, ls), v in samples.items() if n == "burrow_slot_state" and v}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_supervisor_reports_gpus_and_slot_states(broker, start_node, tmp_path, node_env):
    # Given `burrow node` on a machine whose NVML reports two GPUs, metrics for Prometheus on
    state = tmp_path / "state"
    release = tmp_path / "release"
    start_node(
        env={
            "OTEL_METRICS_EXPORTER": "prometheus",
            "PYTHONPATH": f"{FAKE_NVML}:{node_env['PYTHONPATH']}",
            "BURROW_NODE_HEARTBEAT_S": "0.2",
            "BURROW_GPUS": "auto",  # ask NVML
        }
    )
    target = wait_for(lambda: node_target(state), 60, "the supervisor's discovery file")

    # Then it reports each GPU once, labelled by its slot, and both slots idle once their workers are up
    samples = wait_for(
        lambda: (s := scrape(target)) and slot_states(s) == {"gpu-0": "idle", "gpu-1": "idle"} and s,
        60,
        "two idle slots",
    )
    assert value(samples, "hw_gpu_utilization", hw_id="gpu-0") == 0.4
    assert value(samples, "hw_gpu_memory_usage_bytes", hw_id="gpu-1") == 2 * 2**30
    assert value(samples, "hw_temperature_celsius", hw_id="gpu-1", hw_type="gpu") == 61
    assert [dict(ls)["hw_id"] for (n, ls) in samples if n == "hw_power_watts"] == ["gpu-0"]  # gpu-1 has no sensor
    assert 0 <= value(samples, "system_cpu_utilization") <= 1
    assert value(samples, "system_memory_usage_bytes") > 0
    # and the workers (past their boot: their slots are idle) report jobs, not resources
    workers = targets(state, "gpu-*.json")
    assert len(workers) == 2
    for worker in workers:
        assert not any(n.startswith(("hw_", "system_")) for (n, _) in scrape(worker))

    # When one slot runs a job, it shows busy; when the job ends, idle again
    send(broker, "tests", "holds_slot", job_key="busy", release_file=str(release))
    busy = wait_for(lambda: sorted(slot_states(scrape(target)).values()) == ["busy", "idle"], 60, "one busy slot")
    assert busy
    release.touch()
    wait_for(lambda: set(slot_states(scrape(target)).values()) == {"idle"}, 60, "both slots idle again")
