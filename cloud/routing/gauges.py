"""The router's gauges: the node registry by state and the quarantine's size.

They describe the whole network, not one process, so the router reports them (every replica the same value:
dashboards take the ``max``). Both are read when Prometheus or the Collector collects, the quarantine count
at most every ``quarantine_every_s`` because counting it lists storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from node.contract.registry import STATES

from ..errors import CloudError
from ..registry import NodeRegistry
from .quarantine import Quarantine

logger = logging.getLogger(__name__)

#: Every state a node can be in for a reader (``node.contract.registry.fold``), so a state with no node reads 0.
NODE_STATES = (*STATES, "silent")


class _Every:
    """``read()`` at most every ``interval_s``; between reads (and after a failed one) the last value."""

    def __init__(self, read: Callable[[], int], interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.read, self.interval_s, self.clock = read, interval_s, clock
        self.value: int | None = None
        self.at: float | None = None

    def get(self) -> int | None:
        now = self.clock()
        if self.at is None or now - self.at >= self.interval_s:
            self.at = now
            try:
                self.value = self.read()
            except Exception as e:  # storage down: keep the last count, say why once per interval
                logger.warning("Quarantine not counted: %s", e)
        return self.value


def register(meter: Any, registry: NodeRegistry, quarantine: Quarantine, *, quarantine_every_s: float = 30.0) -> None:
    """``burrow.registry.nodes`` {state, subcloud} and ``burrow.quarantine.entries`` on ``meter``."""
    from opentelemetry.metrics import Observation

    count = _Every(lambda: sum(1 for _ in quarantine.ids()), quarantine_every_s)

    def nodes(_options: Any) -> Iterable[Observation]:
        try:
            views = registry.nodes()
        except CloudError as e:
            logger.warning("Node registry not reported: %s", e)
            return
        subclouds = {view.subcloud for view in views.values()} or {"public"}
        for subcloud in sorted(subclouds):
            for state in NODE_STATES:
                n = sum(1 for v in views.values() if v.subcloud == subcloud and v.state == state)
                yield Observation(n, {"state": state, "subcloud": subcloud})

    def entries(_options: Any) -> Iterable[Observation]:
        value = count.get()
        if value is not None:
            yield Observation(value)

    meter.create_observable_gauge(
        "burrow.registry.nodes", [nodes], unit="{node}", description="Nodes heard from in the last hour, by state"
    )
    meter.create_observable_gauge(
        "burrow.quarantine.entries", [entries], unit="{job}", description="Jobs in the quarantine"
    )
