"""Slot policy (pure) and the flock-based claim."""

from __future__ import annotations

import os

import pytest

from node.errors import SlotError
from node.supervisor.slots import Slot, SlotLease, check_capacity, discover_gpus, node_slots


def test_gpu_discovery_precedence():
    assert discover_gpus(["3", "4"], {"CUDA_VISIBLE_DEVICES": "0"}, 8) == ["3", "4"]
    assert discover_gpus(None, {"CUDA_VISIBLE_DEVICES": "1,2"}, 8) == ["1", "2"]
    assert discover_gpus(None, {"CUDA_VISIBLE_DEVICES": ""}, 8) == []
    assert discover_gpus(None, {"CUDA_VISIBLE_DEVICES": "-1"}, 8) == []
    assert discover_gpus(None, {}, 2) == ["0", "1"]
    assert discover_gpus(None, {}, None) == []


def test_slots_are_gpus_or_else_cpus():
    assert node_slots(["0", "1"], cpu_slots=8) == [Slot("gpu-0", "0"), Slot("gpu-1", "1")]
    assert node_slots([], cpu_slots=2) == [Slot("cpu-0"), Slot("cpu-1")]
    assert Slot("cpu-0").cuda_visible_devices == ""


def test_capacity_error_says_what_to_change():
    with pytest.raises(SlotError, match=r"5 worker processes requested but this node has only 4 GPU slot\(s\)"):
        check_capacity(5, node_slots(["0", "1", "2", "3"], 1))
    check_capacity(4, node_slots(["0", "1", "2", "3"], 1))


def test_a_slot_is_claimed_once(tmp_path):
    slots = node_slots(["0", "1"], 1)
    first = SlotLease.claim(slots, tmp_path)
    second = SlotLease.claim(slots, tmp_path)
    assert {first.slot.id, second.slot.id} == {"gpu-0", "gpu-1"}
    with pytest.raises(SlotError, match="all 2 slot"):
        SlotLease.claim(slots, tmp_path)
    with pytest.raises(SlotError, match="held by another process"):
        SlotLease.claim(slots, tmp_path, preferred=first.slot.id)
    first.release()
    assert SlotLease.claim(slots, tmp_path, preferred="gpu-0").slot.id == "gpu-0"
    with pytest.raises(SlotError, match="not one of"):
        SlotLease.claim(slots, tmp_path, preferred="gpu-9")


def test_pin_sets_cuda_visible_devices(tmp_path):
    lease = SlotLease.claim(node_slots(["7"], 1), tmp_path)
    environ: dict[str, str] = {}
    lease.pin(environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "7" and environ["BURROW_SLOT"] == "gpu-7"
    lease.release()


def test_forked_child_does_not_keep_the_slot_lock(tmp_path):
    # Given a worker holding a slot that forks a helper (a DataLoader worker, say)
    slots = node_slots(["0"], 1)
    lease = SlotLease.claim(slots, tmp_path)
    read_fd, write_fd = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper outlives the worker
        os.close(write_fd)
        os.write(ready_write, b"r")  # fork hooks have run by now
        os.read(read_fd, 1)
        os._exit(0)
    os.close(read_fd)
    os.read(ready_read, 1)
    try:
        # When the worker lets go of its slot while the helper still runs
        lease.release()
        # Then the slot is free again
        SlotLease.claim(slots, tmp_path).release()
    finally:
        os.write(write_fd, b"x")
        os.waitpid(pid, 0)
