"""The registry's wire format: a heartbeat round-trips; anything else on the stream is ignored, never an error
that would stop every reader (router, `burrow nodes`, the autoscaler) from seeing the live nodes."""

from __future__ import annotations

import json

import pytest

from node.contract.registry import Heartbeat, fold

GOOD = Heartbeat(node="node-a", process="cpu-0/7", queues=("tests",), running=("j1",), at=1000.0, interval_s=10)


def beat(**changes) -> bytes:
    return json.dumps({**json.loads(GOOD.encode()), **changes}).encode()


def test_a_heartbeat_round_trips():
    assert Heartbeat.decode(GOOD.encode()) == GOOD
    troubled = Heartbeat(node="n", process="cpu-0/1", clock_offset_s=-3600.2, storage_failing=True, at=1000.0)
    assert Heartbeat.decode(troubled.encode()) == troubled


def test_a_node_shows_its_live_processes_clock_offset_and_failing_storage():
    ok = Heartbeat(node="n", process="cpu-0/1", at=1000.0)
    off = Heartbeat(node="n", process="cpu-1/2", clock_offset_s=3600.4, storage_failing=True, at=1000.0)
    gone = Heartbeat(node="n", process="cpu-2/3", clock_offset_s=-99999.0, storage_failing=True, at=900.0)
    view = fold([ok, off, gone], now=1005.0)["n"]
    assert view.clock_offset_s == 3600.4 and view.storage_failing  # (the silent process counts for nothing)
    assert fold([ok], now=1005.0)["n"].clock_offset_s == 0.0 and not fold([ok], now=1005.0)["n"].storage_failing
    # an older node's beats, without the fields, read as in step and working
    assert Heartbeat.decode(json.dumps({"node": "old", "process": "cpu-0/1", "at": 1.0}).encode()).clock_offset_s == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
        b"[]",
        beat(node=7),
        beat(process=7),
        beat(process=None),
        beat(slot=["gpu-0"]),
        beat(subcloud={}),
        beat(version=1),
        beat(state="asleep"),
        beat(at="1000"),
        beat(at=True),
        beat(interval_s="10"),
        beat(threads="2"),
        beat(threads=1.5),
        beat(queues="tests"),
        beat(running={"j1": 1}),
        beat(at=1e400),
        beat(clock_offset_s="3600"),
        beat(clock_offset_s=float("nan")),
        beat(storage_failing="yes"),
        beat(storage_failing=1),
    ],
)
def test_anything_but_a_heartbeat_is_ignored_and_cannot_break_a_fold(body):
    assert Heartbeat.decode(body) is None
    assert list(fold([GOOD, *filter(None, [Heartbeat.decode(body)])], now=1005.0)) == ["node-a"]


def test_machines_sharing_a_node_id_and_pids_are_all_seen_and_counted():
    # Given two containers of one group, given the same BURROW_NODE_ID by their shared environment, whose
    # worker processes have the same pid (a container's first processes get the same numbers)
    one = Heartbeat(node="salad", process="cpu-0/7", instance="i1", host="c1", running=("j1",), at=1000.0)
    other = Heartbeat(node="salad", process="cpu-0/7", instance="i2", host="c2", running=("j2",), at=1001.0)
    # When the registry folds their beats, neither hides the other, and the node says it is two machines
    (view,) = fold([one, other], now=1002.0).values()
    assert sorted(view.running) == ["j1", "j2"] and view.hosts == 2
    # while a node restarted on its machine (a new instance beside its last beats) is one machine
    restarted = Heartbeat(node="salad", process="cpu-0/9", instance="i3", host="c1", at=1001.5)
    assert fold([one, restarted], now=1002.0)["salad"].hosts == 1
    assert Heartbeat.decode(one.encode()) == one
