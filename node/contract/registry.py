"""The node registry's wire format: heartbeats, and what a reader makes of them. Pure: no I/O, no clock.

Every worker process of every node publishes a heartbeat every ``BURROW_NODE_HEARTBEAT_S`` to one RabbitMQ
*stream* (``burrow.nodes``): a stream keeps what was published (for ``NODES_MAX_AGE``) and any number of
readers — router replicas, ``burrow nodes``, the autoscaler — read it without taking anything from each
other. A worker that stops cleanly says so (``state = "stopped"``); one that vanishes simply goes silent.

A reader folds the heartbeats it read (``fold``) into one ``NodeView`` per node: *live* while any of its
processes was heard from within ``live_window_s`` and did not say it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: The stream every worker process heartbeats into (under the deployment's queue prefix).
NODES_STREAM = "burrow.nodes"
#: How long the stream keeps heartbeats: "recently dead" nodes are those heard from within it.
NODES_MAX_AGE = "1h"
#: A process is live while its last heartbeat is younger than this many heartbeat intervals.
LIVE_INTERVALS = 3.0

STATES = ("up", "draining", "stopped")
#: A heartbeat's text and list fields: a reader checks each one's type, so no sender can break a ``fold``.
_TEXT = ("slot", "subcloud", "state", "version", "instance", "host")
_LISTS = ("models", "queues", "running", "running_queues")


@dataclass(frozen=True)
class Heartbeat:
    """What one worker process says about itself.

    Attributes:
        node: The node id (``BURROW_NODE_ID``).
        process: This process's key within the node (its slot id and pid).
        slot: The slot (``gpu-0``, ``cpu-1``).
        subcloud: The node's subcloud.
        models: The models the node serves (empty: all of its subcloud's).
        queues: The logical work queues this process takes jobs from.
        threads: Worker threads in this process (jobs it may run at once).
        running: The job ids it runs now.
        running_queues: The queue each of those came from (same order).
        state: ``up``, ``draining`` (SIGTERM received) or ``stopped``.
        version: Burrow's version.
        at: When it was sent (Unix seconds).
        interval_s: How often this process heartbeats (a reader times it out after ``LIVE_INTERVALS``).
        instance: The node instance (one ``burrow node`` or ``dramatiq`` run).
        host: The machine's host name: two machines given the same node id (as a container group's shared
            environment does) have different ones.
        clock_offset_s: Its storage's clock minus this machine's, where the storage showed it is off (the node
            corrects for it: ``node.storage.s3_clock``); 0 in step.
        storage_failing: Its storage fails, so it takes no jobs (``node.broker.intake``).
    """

    node: str
    process: str
    slot: str = ""
    subcloud: str = "public"
    models: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    threads: int = 1
    running: tuple[str, ...] = ()
    running_queues: tuple[str, ...] = ()
    state: str = "up"
    version: str = ""
    at: float = 0.0
    interval_s: float = 10.0
    instance: str = ""
    host: str = ""
    clock_offset_s: float = 0.0
    storage_failing: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        """Which process this is a beat of: its newest beat stands for it (machines that share a node id can
        share pids too, so the instance is part of it)."""
        return (self.node, self.instance, self.process)

    def encode(self) -> bytes:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> Heartbeat | None:
        """The heartbeat in ``body``, or ``None`` for anything else (a probe, garbage, a newer format)."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("node", "process")):
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in _TEXT:
            if not isinstance(known.get(name, ""), str):
                return None
        for name in _LISTS:
            if not isinstance(known.get(name, []), list):
                return None
            known[name] = tuple(str(x) for x in known.get(name) or ())
        if type(known.get("threads", 1)) is not int:
            return None
        if type(known.get("storage_failing", False)) is not bool:
            return None
        for name in ("at", "interval_s", "clock_offset_s"):
            value = known.get(name, 0.0)
            if type(value) not in (int, float) or not math.isfinite(value):
                return None
        beat = cls(**known)
        return beat if beat.state in STATES else None


@dataclass(frozen=True)
class NodeView:
    """A node as the registry sees it: its processes' latest heartbeats folded together."""

    node: str
    subcloud: str
    models: tuple[str, ...]
    queues: frozenset[str]
    last_seen: float
    live: bool
    state: str  # up, draining, stopped (cleanly), silent (vanished)
    version: str
    slots: tuple[Heartbeat, ...] = field(default_factory=tuple)
    hosts: int = 1  # machines heartbeating live under this id (more than one: a shared node id)
    clock_offset_s: float = 0.0  # the largest of its live processes' (their storage's clock minus theirs)
    storage_failing: bool = False  # a live process of it takes no jobs: its storage fails

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(job for beat in self.slots for job in beat.running)


def _process_live(beat: Heartbeat, now: float) -> bool:
    return beat.state != "stopped" and now - beat.at <= LIVE_INTERVALS * beat.interval_s


def fold(heartbeats: Iterable[Heartbeat], *, now: float) -> dict[str, NodeView]:
    """One ``NodeView`` per node from heartbeats in any order (the newest per process wins)."""
    latest: dict[tuple[str, str, str], Heartbeat] = {}
    for beat in heartbeats:
        key = beat.key
        if key not in latest or beat.at >= latest[key].at:
            latest[key] = beat
    by_node: dict[str, list[Heartbeat]] = {}
    for (node, _, _), beat in sorted(latest.items()):
        by_node.setdefault(node, []).append(beat)
    views = {}
    for node, beats in by_node.items():
        live_beats = [b for b in beats if _process_live(b, now)]
        newest = max(beats, key=lambda b: b.at)
        if live_beats:
            state = "draining" if all(b.state == "draining" for b in live_beats) else "up"
        else:
            state = "stopped" if newest.state == "stopped" else "silent"
        shown = live_beats or beats
        views[node] = NodeView(
            node=node,
            subcloud=newest.subcloud,
            models=newest.models,
            queues=frozenset(q for b in live_beats for q in b.queues),
            last_seen=newest.at,
            live=bool(live_beats) and state == "up",
            state=state,
            version=newest.version,
            slots=tuple(sorted(shown, key=lambda b: (b.instance, b.process))),
            hosts=len({b.host for b in live_beats}) or 1,
            clock_offset_s=max((b.clock_offset_s for b in live_beats), key=abs, default=0.0),
            storage_failing=any(b.storage_failing for b in live_beats),
        )
    return views


def describe(view: NodeView, now: float) -> dict[str, Any]:
    """A row for ``burrow nodes``."""
    busy = sum(1 for b in view.slots if b.running)
    return {
        "node": view.node,
        "state": view.state,
        "subcloud": view.subcloud,
        "models": ",".join(view.models) or "all",
        "slots": f"{busy}/{len(view.slots)} busy",
        "seen": f"{max(0.0, now - view.last_seen):.0f}s ago",
        "version": view.version,
        "running": ",".join(view.running),
    }


def describe_offset(offset_s: float) -> str:
    """``"3,600 s behind"`` / ``"12 s ahead of"`` / ``"in step with"``: how this machine's clock stands."""
    if not offset_s:
        return "in step with"
    return f"{abs(offset_s):,.0f} s {'behind' if offset_s > 0 else 'ahead of'}"
