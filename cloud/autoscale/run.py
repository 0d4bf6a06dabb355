"""The autoscaler's rounds: measure each group's depth, ask ``policy.decide``, apply it through the provider.

A group's depth is the ready messages of its queues (the broker) plus the jobs running from them (the node
registry: RabbitMQ reports unacked counts only through its management API, and a slot's priority consumer
holds no subscription). What each group's decisions must remember between rounds (how long demand has been
low) is kept in a small JSON file, so ``burrow autoscale --once`` from cron keeps its scale-down delay too.
One group's failure (an API error, a queue it cannot read) is reported and leaves the others alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import AutoscaleConfig, GroupConfig
from .policy import ScaleDecision, ScaleState, decide
from .provider import Provider, ProviderError

logger = logging.getLogger("burrow.autoscale")


@dataclass(frozen=True)
class GroupRound:
    """What one round did for one group."""

    group: str
    depth: int | None
    current: int | None
    decision: ScaleDecision | None
    error: str | None = None

    def line(self) -> str:
        if self.error is not None:
            return f"{self.group}: error: {self.error}"
        assert self.decision is not None
        change = (
            f"{self.current} replica(s)"
            if self.decision.replicas == self.current
            else f"{self.current} -> {self.decision.replicas} replica(s)"
        )
        depth = "?" if self.depth is None else self.depth
        return f"{self.group}: {depth} job(s), {change} ({self.decision.reason})"


def make_provider(group: GroupConfig, environ: Mapping[str, str], state_dir: Path) -> Provider:
    """The provider a group's ``provider`` setting names."""
    if group.provider == "local":
        from .local import LocalProvider

        return LocalProvider.from_options(group.name, group.options, environ, state_dir)
    from .salad import SaladProvider

    return SaladProvider.from_options(group.options, environ)


class Autoscaler:
    """Runs rounds over the configured groups.

    Parameters:
        config: The groups.
        providers: Each group's provider, by group name.
        depth: Returns (depth by group name — ``None`` where unreadable, idle node ids) for a round.
        state_file: Where decisions' memory is kept between rounds and runs.
        clock: Wall clock (the memory outlives the process, so not a monotonic one).
    """

    def __init__(
        self,
        config: AutoscaleConfig,
        providers: Mapping[str, Provider],
        depth: Callable[[], tuple[dict[str, int | None], frozenset[str]]],
        state_file: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.providers = providers
        self.depth = depth
        self.state_file = Path(state_file)
        self.clock = clock

    def round(self) -> list[GroupRound]:
        states = self._load()
        try:
            depths, idle = self.depth()
        except Exception as e:  # the broker or the registry unreadable: every group holds
            logger.warning("Queue depths unreadable this round: %s", e)
            depths, idle = {}, frozenset()
        now = self.clock()
        results = []
        for group in self.config.groups:
            depth = depths.get(group.name)
            provider = self.providers[group.name]
            try:
                current = provider.current()
                decision, states[group.name] = decide(depth, current, group.policy, states[group.name], now)
                if decision.replicas != current:
                    provider.scale_to(decision.replicas, idle=idle)
                results.append(GroupRound(group.name, depth, current, decision))
            except ProviderError as e:
                results.append(GroupRound(group.name, depth, None, None, error=str(e)))
            except Exception as e:  # a provider's bug must not stop the other groups scaling
                logger.warning("Group %s: unexpected error", group.name, exc_info=True)
                results.append(GroupRound(group.name, depth, None, None, error=f"{type(e).__name__}: {e}"))
        self._save(states)
        return results

    def _load(self) -> dict[str, ScaleState]:
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError, RecursionError):  # (unreadable or damaged: every delay starts again)
            raw = {}
        now = self.clock()
        states = {}
        for group in self.config.groups:
            entry = raw.get(group.name) if isinstance(raw, dict) else None
            states[group.name] = _state_of(entry, now)
        return states

    def _save(self, states: Mapping[str, ScaleState]) -> None:
        data = {name: {"low_since": s.low_since, "low_peak": s.low_peak} for name, s in states.items()}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_file)


def _state_of(entry: Any, now: float) -> ScaleState:
    """A group's remembered state from the file; a fresh one for anything else than a time in the past and a
    count (an edited or damaged file: the scale-down delay then starts again, it never waits forever)."""
    if not isinstance(entry, dict):
        return ScaleState()
    since, peak = entry.get("low_since"), entry.get("low_peak", 0)
    if isinstance(since, bool) or not isinstance(since, int | float) or not (math.isfinite(since) and since <= now):
        return ScaleState()
    if isinstance(peak, bool) or not isinstance(peak, int) or peak < 0:
        return ScaleState()
    return ScaleState(float(since), peak)


def broker_depths(broker: Any, registry: Any, config: AutoscaleConfig):
    """A ``depth`` function for ``Autoscaler`` reading the broker and the node registry."""
    from ..operate import queue_rows

    def depth() -> tuple[dict[str, int | None], frozenset[str]]:
        views = registry.nodes()
        idle = frozenset(v.node for v in views.values() if v.live and not v.running)
        depths: dict[str, int | None] = {}
        for group in config.groups:
            total = 0
            for row in queue_rows(broker, views, list(group.queues)):
                if row["ready"] is None:
                    logger.warning("Group %s: queue %s is not on the broker (counted empty)", group.name, row["queue"])
                total += (row["ready"] or 0) + row["running"]
            depths[group.name] = total
        return depths, idle

    return depth


def run(
    settings: Any,
    config: AutoscaleConfig,
    *,
    once: bool,
    state_file: Path | None = None,
    interval_s: float | None = None,
    environ: Mapping[str, str] | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """``burrow autoscale``: one round (``once``) or rounds every ``interval_s`` until interrupted."""
    from ..client import connect
    from ..registry import NodeRegistry

    environ = os.environ if environ is None else environ
    providers = {g.name: make_provider(g, environ, settings.state_dir) for g in config.groups}
    broker = connect(settings)
    interval = interval_s or config.interval_s
    registry = NodeRegistry(broker.parameters, settings.queue_prefix, window_s=600, refresh_s=interval / 2)
    scaler = Autoscaler(
        config, providers, broker_depths(broker, registry, config), state_file or settings.state_dir / "autoscale.json"
    )
    failed = False
    try:
        while True:
            results = scaler.round()
            for result in results:
                out(result.line())
            failed = any(r.error for r in results)
            if once:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
    return 1 if failed else 0
