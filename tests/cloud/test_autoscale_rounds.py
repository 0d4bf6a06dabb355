"""The autoscaler's rounds with stand-in providers (no broker, no API): what one group's trouble, or a damaged
state file, does to a round."""

from __future__ import annotations

import json

import pytest

from cloud.autoscale.config import parse_config
from cloud.autoscale.run import Autoscaler

pytestmark = pytest.mark.timeout(30)

NOW = 100_000.0


class Pool:
    """A provider whose size is a number; ``broken`` raises what a buggy provider might."""

    def __init__(self, replicas: int, broken: Exception | None = None) -> None:
        self.replicas = replicas
        self.broken = broken

    def current(self) -> int:
        if self.broken is not None:
            raise self.broken
        return self.replicas

    def scale_to(self, replicas: int, *, idle: frozenset[str] = frozenset()) -> None:
        self.replicas = replicas


def config(*names: str):
    groups = {
        name: {"queues": [f"q-{name}"], "provider": "local", "scale_down_delay_s": 300, "min_replicas": 0}
        for name in names
    }
    return parse_config({"groups": groups})


def test_a_provider_that_raises_something_unexpected_is_reported_and_the_others_still_scale(tmp_path):
    pools = {"a": Pool(0, broken=KeyError("replicas")), "b": Pool(0)}
    scaler = Autoscaler(config("a", "b"), pools, lambda: ({"a": 3, "b": 3}, frozenset()), tmp_path / "s.json")

    a, b = scaler.round()

    assert a.error == "KeyError: 'replicas'" and a.line() == "a: error: KeyError: 'replicas'"
    assert b.error is None and pools["b"].replicas == 3
    assert json.loads((tmp_path / "s.json").read_text())  # the round ended and kept its state


@pytest.mark.parametrize(
    "entry",
    [
        {"low_since": "yesterday", "low_peak": 1},
        {"low_since": float("nan"), "low_peak": 1},
        {"low_since": float("inf"), "low_peak": 1},
        {"low_since": float("-inf"), "low_peak": 1},
        {"low_since": NOW + 10_000, "low_peak": 1},  # the future (a clock set back)
        {"low_since": NOW - 10_000, "low_peak": "two"},
        {"low_since": NOW - 10_000, "low_peak": -4},
        {"low_since": True, "low_peak": 1},
        ["not", "an", "object"],
    ],
)
def test_a_damaged_state_file_starts_the_scale_down_delay_again_never_crashes_or_waits_forever(tmp_path, entry):
    # Given a pool of four with no demand, and a state file someone edited or a crash left odd
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"a": entry}))
    pool = Pool(4)
    clock = [NOW]
    scaler = Autoscaler(config("a"), {"a": pool}, lambda: ({"a": 0}, frozenset()), state, clock=lambda: clock[0])

    # When rounds run: the first holds and starts the delay afresh
    (first,) = scaler.round()
    assert first.error is None and pool.replicas == 4 and "0s of 300s low" in first.decision.reason

    # Then once the delay has passed, the pool scales down
    clock[0] += 301
    (later,) = scaler.round()
    assert later.error is None and pool.replicas == 0


@pytest.mark.parametrize("damage", ["{not json", "[" * 100_000, "\udcff"])
def test_a_state_file_that_does_not_read_starts_every_delay_again(tmp_path, damage):
    state = tmp_path / "s.json"
    state.write_text(damage, errors="surrogateescape")
    pool = Pool(4)
    scaler = Autoscaler(config("a"), {"a": pool}, lambda: ({"a": 0}, frozenset()), state, clock=lambda: NOW)

    (first,) = scaler.round()

    assert first.error is None and "0s of 300s low" in first.decision.reason
    assert json.loads(state.read_text()) == {"a": {"low_since": NOW, "low_peak": 0}}
