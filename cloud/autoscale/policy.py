"""How many replicas a node pool should have: a pure function of its queues' depth, its size and the time.

Scaling up happens at once (a backlog is waiting). Scaling down waits until demand has stayed below the
current size for ``scale_down_delay_s``, then goes to the highest demand seen during that wait, so a queue
that empties between two bursts does not make the pool flap; and it does not bother for a drop smaller than
the hysteresis band (a fraction of the current size). A replica removed mid-job hands its job back (SIGTERM),
which costs an interruption: hence the patience.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalePolicy:
    """A pool's scaling rules.

    Attributes:
        jobs_per_replica: Queued or running jobs one replica is sized for (GPU slots per node, say).
        min_replicas: Never fewer (0: scale to zero when idle).
        max_replicas: Never more (SaladCloud's API caps a container group at 250).
        scale_down_delay_s: How long demand must stay below the pool's size before it shrinks.
        hysteresis: A drop of less than this fraction of the current size is ignored (at least one replica).
    """

    jobs_per_replica: float = 1.0
    min_replicas: int = 0
    max_replicas: int = 250
    scale_down_delay_s: float = 300.0
    hysteresis: float = 0.1

    def __post_init__(self) -> None:
        if not (isinstance(self.jobs_per_replica, int | float) and 0 < self.jobs_per_replica < math.inf):
            raise ValueError(f"jobs_per_replica must be a number > 0, got {self.jobs_per_replica!r}")
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        if not (isinstance(self.scale_down_delay_s, int | float) and self.scale_down_delay_s >= 0):
            raise ValueError(f"scale_down_delay_s must be a number >= 0, got {self.scale_down_delay_s!r}")
        if not (isinstance(self.hysteresis, int | float) and 0 <= self.hysteresis < 1):
            raise ValueError(f"hysteresis must be a fraction in [0, 1), got {self.hysteresis!r}")


@dataclass(frozen=True)
class ScaleState:
    """What a pool's decisions remember between rounds: since when demand has been below its size, and the
    highest demand seen since then."""

    low_since: float | None = None
    low_peak: int = 0


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int  # the size the pool should have (equal to the current size: no change)
    reason: str


def wanted(depth: int, policy: ScalePolicy) -> int:
    """Replicas for ``depth`` queued and running jobs, within the policy's bounds."""
    return max(policy.min_replicas, min(policy.max_replicas, math.ceil(depth / policy.jobs_per_replica)))


def decide(
    depth: int | None, current: int, policy: ScalePolicy, state: ScaleState, now: float
) -> tuple[ScaleDecision, ScaleState]:
    """The pool's size for this round, and the state to remember.

    Args:
        depth: Jobs waiting or running in the pool's queues (``None``: unknown this round).
        current: The pool's size now.
        policy: Its rules.
        state: What the previous round left.
        now: The time (seconds; any monotonic-enough clock, the same every round).
    """
    if depth is None:
        return ScaleDecision(current, "queue depth unknown: holding"), state
    target = wanted(depth, policy)
    if target > current:
        reason = (
            f"below min_replicas ({policy.min_replicas})"
            if current < policy.min_replicas and depth <= current * policy.jobs_per_replica
            else f"{depth} job(s) for {current} replica(s)"
        )
        return ScaleDecision(target, f"{reason}: scaling up"), ScaleState()
    if current > policy.max_replicas:
        return ScaleDecision(policy.max_replicas, f"above max_replicas ({policy.max_replicas})"), ScaleState()
    band = max(1, math.floor(current * policy.hysteresis))
    if current - target < band:
        return ScaleDecision(current, f"{depth} job(s) for {current} replica(s): steady"), ScaleState()
    low_since = state.low_since if state.low_since is not None else now
    peak = max(target, state.low_peak if state.low_since is not None else 0)
    waited = now - low_since
    if waited < policy.scale_down_delay_s:
        reason = f"{depth} job(s) for {current} replica(s): {waited:.0f}s of {policy.scale_down_delay_s:.0f}s low"
        return ScaleDecision(current, reason), ScaleState(low_since, peak)
    if current - peak < band:
        return ScaleDecision(current, f"demand came back to {peak} replica(s): steady"), ScaleState()
    return ScaleDecision(peak, f"low for {waited:.0f}s: scaling down to {peak}"), ScaleState()
