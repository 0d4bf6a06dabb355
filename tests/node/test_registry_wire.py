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
    ],
)
def test_anything_but_a_heartbeat_is_ignored_and_cannot_break_a_fold(body):
    assert Heartbeat.decode(body) is None
    assert list(fold([GOOD, *filter(None, [Heartbeat.decode(body)])], now=1005.0)) == ["node-a"]
