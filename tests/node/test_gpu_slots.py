"""Acceptance: each worker process owns exactly one GPU (or CPU) slot, pinned via CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

DRAMATIQ = [sys.executable, "-m", "dramatiq", "node.actors", "--threads", "1"]


def statuses(state_dir: Path, count: int) -> list[dict] | None:
    found = []
    for path in sorted((state_dir / "slots").glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
    return found if len(found) == count else None


def process_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_burrow_node_with_four_fake_gpus_pins_each_process_to_its_own(start_node, tmp_path):
    # Given a node told it has four GPUs
    start_node("--processes", "4", env={"BURROW_GPUS": "0,1,2,3"})

    # When its four workers have booted
    found = wait_for(lambda: statuses(tmp_path / "state", 4), 90, "four workers to claim slots")

    # Then each reports a distinct CUDA_VISIBLE_DEVICES, set in the process before Python started
    assert sorted(s["cuda_visible_devices"] for s in found) == ["0", "1", "2", "3"]
    assert sorted(s["slot"] for s in found) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    for status in found:
        assert process_environ(status["pid"])["CUDA_VISIBLE_DEVICES"] == status["cuda_visible_devices"]


def test_dramatiq_cli_with_four_fake_gpus_gives_distinct_devices(start_node, tmp_path):
    # Given plain `dramatiq node.actors --processes 4` on a node with four GPUs
    start_node(argv=[*DRAMATIQ, "--processes", "4"], env={"BURROW_GPUS": "0,1,2,3"})

    # Then the four processes claim the four GPUs, one each
    found = wait_for(lambda: statuses(tmp_path / "state", 4), 90, "four workers to claim slots")
    assert sorted(s["cuda_visible_devices"] for s in found) == ["0", "1", "2", "3"]
    assert len({s["pid"] for s in found}) == 4


def test_more_processes_than_gpus_is_a_clear_startup_error(start_node):
    # burrow node refuses before starting anything
    node = start_node("--processes", "5", env={"BURROW_GPUS": "0,1,2,3"})
    assert node.process.wait(timeout=30) == 2
    assert "5 worker processes requested but this node has only 4 GPU slot(s)" in node.output()

    # dramatiq node.actors: the fifth process cannot claim a slot and the node does not start
    node = start_node(argv=[*DRAMATIQ, "--processes", "5"], env={"BURROW_GPUS": "0,1,2,3"})
    assert node.process.wait(timeout=60) != 0
    output = node.output()
    assert "Cannot start worker yet: all 4 slot(s) of this node are taken" in output
    assert "Traceback" not in output


def test_without_gpus_workers_take_cpu_slots_and_run_jobs(broker, storage, start_node, tmp_path):
    # Given a node with no GPU: no BURROW_GPUS, no CUDA_VISIBLE_DEVICES, no NVML on this machine
    start_node(env={"BURROW_GPUS": "auto", "BURROW_CPU_SLOTS": "2"})

    # Then its workers take CPU slots that hide every GPU
    found = wait_for(lambda: statuses(tmp_path / "state", 2), 60, "two workers to claim slots")
    assert sorted(s["slot"] for s in found) == ["cpu-0", "cpu-1"]
    assert all(s["cuda_visible_devices"] == "" for s in found)

    # And the simulation actor runs on one of them
    from tests.conftest import send

    message = send(broker, "simulation", "simulate", seed=7, samples=20_000)
    from node.storage.records import RecordStore

    record = wait_for(
        lambda: (r := RecordStore(storage).get(message.message_id)) and r["status"] == "succeeded" and r,
        60,
        "the simulation result",
    )
    assert json.loads(storage.get(record["artifacts"]["result.json"])[0])["slot"] in {"cpu-0", "cpu-1"}
