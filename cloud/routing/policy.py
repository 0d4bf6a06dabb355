"""Where a job goes when a node gave it up: the router's policy. Pure: no clock, no I/O.

The interface an operator implements to plug in another policy (``BURROW_ROUTING_POLICY=pkg.mod:Class``):

    class MyPolicy:
        def __init__(self, config: RouterConfig): ...
        def decide(self, request: RouteRequest, history: JobHistory, nodes: Sequence[NodeView],
                   topology: Topology | None, now: float) -> Route: ...

``request`` is what happened (a node gave the job up, a node it must avoid received it, the broker
dead-lettered it, an operator requeued it); ``history`` its attempts and the router's earlier decisions;
``nodes`` the nodes of the registry, live and recently seen (``NodeView.live`` and ``state`` tell which);
the answer a ``Route``: dispatch to a queue (after a delay, with the nodes to avoid), hold (ask again after
a delay), or quarantine, with a reason. The router carries a counted decision out exactly once.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from node.contract.job_options import JobOptions
from node.contract.queues import DeadLetterReason
from node.contract.registry import NodeView
from node.contract.topology import ANY_MODEL, Topology, parse_queue_name, queue_name
from node.errors import ConfigError

#: Attempt outcomes that count against the node that ran them.
_FAILED_HERE = frozenset({"failed", "timed_out", "crashed"})

KINDS = ("failed", "avoided", "dead_letter", "requeue")


@dataclass(frozen=True)
class RouterConfig:
    """The default policy's knobs.

    Attributes:
        max_redispatches: Re-dispatches of one job before it is quarantined (``BURROW_MAX_REDISPATCHES``).
        cooldown_s: Pause before a re-dispatched job may start again (``BURROW_ROUTER_COOLDOWN_S``).
        avoid_delay_s: Pause before a job is offered again when a node it must avoid took it
            (``BURROW_ROUTER_AVOID_DELAY_S``).
        silent_grace_s: How long after a node was last heard from the router still waits for it, when no
            live node can take a job it could (``BURROW_ROUTER_SILENT_GRACE_S``). A node that vanished
            without saying it stopped may be only cut off for a while: during a broker node's failover the
            registry stream can pause every node's heartbeats for tens of seconds.
    """

    max_redispatches: int = 3
    cooldown_s: float = 5.0
    avoid_delay_s: float = 2.0
    silent_grace_s: float = 120.0


@dataclass(frozen=True)
class RouteRequest:
    """What the router is asked to place.

    Attributes:
        kind: ``failed`` (a node spent the job's failure budget), ``avoided`` (a node in its ``avoid_nodes``
            took it), ``dead_letter`` (the broker or a node dead-lettered it), ``requeue`` (an operator).
        queue: The logical queue the job was on.
        job: The job options, or ``None`` when the message was unreadable.
        reason: Why (the node's reason, or the dead letter's detail).
        node: The node that reported it, if any.
        dead_letter_reason: For dead letters: ``malformed``, ``expired``, ``stale``, ``delivery_limit``,
            ``rejected``.
        to_queue: For a requeue: the queue the operator asked for, if any.
    """

    kind: str
    queue: str
    job: JobOptions | None
    reason: str = ""
    node: str | None = None
    dead_letter_reason: str | None = None
    to_queue: str | None = None


@dataclass(frozen=True)
class JobHistory:
    """The job's attempts (from its record) and the router's earlier counted decisions about it."""

    attempts: tuple[dict[str, Any], ...] = ()
    dispatches: tuple[dict[str, Any], ...] = ()

    def failed_on(self) -> tuple[str, ...]:
        failed = (a.get("node") for a in self.attempts if a.get("outcome") in _FAILED_HERE)
        nodes = [node for node in failed if isinstance(node, str) and node]
        return tuple(dict.fromkeys(nodes))

    def redispatches(self) -> int:
        """Re-dispatches since the job was last requeued by an operator (who resets the count)."""
        count = 0
        for entry in self.dispatches:
            if entry.get("kind") == "requeue":
                count = 0
            elif entry.get("action") == "dispatch":
                count += 1
        return count


@dataclass(frozen=True)
class Route:
    """The policy's decision.

    Attributes:
        action: ``dispatch``, ``hold`` (no decision yet: ask again after ``delay_s``) or ``quarantine``.
        queue: Where to dispatch (a logical queue name).
        delay_s: Pause before the job may start.
        avoid_nodes: Nodes that must not run it.
        reason: Why, in words an operator reads in ``burrow quarantine show``.
        reset_counters: Start the job's failure and interruption counters again (an operator's requeue).
        counted: Count it against ``max_redispatches`` and record it (a bounce away from an avoided node
            is not counted).
    """

    action: str
    queue: str | None = None
    delay_s: float = 0.0
    avoid_nodes: tuple[str, ...] = ()
    reason: str = ""
    reset_counters: bool = True
    counted: bool = True

    @classmethod
    def from_saved(cls, saved: Any) -> Route:
        """A decision as a record's ``routing`` entry keeps it; raises ``ValueError`` saying what is wrong
        (a record is storage anyone with write access may have edited)."""
        if not isinstance(saved, dict):
            raise ValueError(f"it is a JSON {type(saved).__name__}, not an object")
        unknown = sorted(set(saved) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown field {str(unknown[0])[:40]!r}")
        try:
            route = cls(**{**saved, "avoid_nodes": saved.get("avoid_nodes") or ()})
        except TypeError as e:  # (no action)
            raise ValueError(str(e)) from None
        if route.action not in ("dispatch", "hold", "quarantine"):
            raise ValueError(f"action {str(route.action)[:40]!r} is not dispatch, hold or quarantine")
        if (route.queue is not None or route.action != "quarantine") and not (
            isinstance(route.queue, str) and route.queue
        ):
            raise ValueError(f"queue must be a queue name (a {route.action} needs one)")
        if type(route.delay_s) not in (int, float) or not 0 <= route.delay_s < 1e9:
            raise ValueError("delay_s must be a number of seconds >= 0")
        if not isinstance(route.avoid_nodes, list | tuple) or not all(isinstance(n, str) for n in route.avoid_nodes):
            raise ValueError("avoid_nodes must be a list of node ids")
        if not isinstance(route.reason, str) or not all(
            type(flag) is bool for flag in (route.reset_counters, route.counted)
        ):
            raise ValueError("reason must be a string, reset_counters and counted booleans")
        return dataclasses.replace(route, avoid_nodes=tuple(route.avoid_nodes))


class RoutingPolicy(Protocol):
    def decide(
        self,
        request: RouteRequest,
        history: JobHistory,
        nodes: Sequence[NodeView],
        topology: Topology | None,
        now: float,
    ) -> Route: ...


def candidate_queues(queue: str, topology: Topology | None) -> list[str]:
    """The queues a job of ``queue`` may run from, nearest first: its own, its subcloud's any-model queue,
    then the same along the subcloud's fallback chain (only queues the topology has)."""
    address = parse_queue_name(queue) if topology is not None else None
    if address is None:
        return [queue]
    subclouds = [address.subcloud, *topology.fallback_chain(address.subcloud)]
    chain: list[str] = []
    for sub in subclouds:
        for model in (address.model, ANY_MODEL):
            name = queue_name(sub, address.job_type, model, address.priority)
            if topology.has(name) and name not in chain:
                chain.append(name)
    return chain or [queue]


class DefaultPolicy:
    """Re-dispatch away from the nodes where the job failed, along the fallback chain; else quarantine.

    * Unreadable, malformed, expired and stale dead letters are quarantined with their reason.
    * A job past its expiry (or that would be by the end of the cooldown) is quarantined, never re-dispatched.
    * An operator's requeue goes back to its queue (or the one asked for) with counters and avoid list reset.
    * Otherwise the job goes to the first queue of ``candidate_queues`` that a live node outside its avoid
      list (nodes it failed on, plus ``avoid_nodes``) serves, after the cooldown; at most
      ``max_redispatches`` times.
    * If no live node serves one, but a node outside the avoid list that serves one went silent less than
      ``silent_grace_s`` ago (vanished, not stopped), the job is held: asked about again after the
      cooldown, and quarantined only once that node has been silent for longer.
    """

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()

    def decide(
        self,
        request: RouteRequest,
        history: JobHistory,
        nodes: Sequence[NodeView],
        topology: Topology | None,
        now: float,
    ) -> Route:
        job = request.job
        if job is None:
            if request.kind == "dead_letter":
                return Route("quarantine", reason=f"dead-lettered ({request.dead_letter_reason}): {request.reason}")
            return Route("quarantine", reason=f"unreadable: {request.reason}")
        if request.kind == "dead_letter" and request.dead_letter_reason != DeadLetterReason.DELIVERY_LIMIT:
            return Route("quarantine", reason=f"dead-lettered ({request.dead_letter_reason}): {request.reason}")
        if request.kind == "requeue":
            return Route("dispatch", queue=request.to_queue or request.queue, reason="requeued by an operator")
        cooldown = self.config.avoid_delay_s if request.kind == "avoided" else self.config.cooldown_s
        if job.expires_at is not None and now + cooldown >= job.expires_at:
            return Route("quarantine", reason="expired: past its TTL, never re-dispatched")
        # The reporting node is avoided when the job failed there, not when it merely had to avoid it.
        reporter = (request.node,) if request.node and request.kind != "avoided" else ()
        avoid = tuple(dict.fromkeys((*job.avoid_nodes, *history.failed_on(), *reporter)))
        chain = candidate_queues(request.queue, topology)
        for number, queue in enumerate(chain):
            takers = [n.node for n in nodes if n.live and queue in n.queues and n.node not in avoid]
            if not takers:
                continue
            bounce = request.kind == "avoided" and number == 0
            if not bounce and history.redispatches() >= self.config.max_redispatches:
                return Route(
                    "quarantine",
                    reason=f"re-dispatched {history.redispatches()} times (max {self.config.max_redispatches})",
                )
            where = "back to its queue" if number == 0 else f"fallback {number} of {len(chain) - 1}"
            return Route(
                "dispatch",
                queue=queue,
                delay_s=cooldown,
                avoid_nodes=avoid,
                reason=f"{request.kind} ({request.reason}): {where}, for {', '.join(sorted(takers))}",
                reset_counters=not bounce,
                counted=not bounce,
            )
        waiting = _recently_silent(nodes, chain, avoid, now, self.config.silent_grace_s)
        if waiting and history.redispatches() < self.config.max_redispatches:
            silent = ", ".join(f"{n.node} (silent {max(0.0, now - n.last_seen):.0f}s)" for n in waiting)
            return Route(
                "hold",
                queue=next(q for q in chain if any(q in beat.queues for n in waiting for beat in n.slots)),
                delay_s=max(cooldown, 1.0),
                avoid_nodes=avoid,
                reason=f"{request.kind} ({request.reason}); no live node serves {', '.join(chain)}: waiting up "
                f"to {self.config.silent_grace_s:.0f}s for {silent}",
                counted=False,
            )
        shown = ", ".join(avoid) or "none"
        return Route(
            "quarantine",
            reason=f"{request.kind} ({request.reason}); no live node outside the avoid list ({shown}) serves "
            f"{', '.join(chain)}",
        )


def _recently_silent(
    nodes: Sequence[NodeView], chain: Sequence[str], avoid: Sequence[str], now: float, grace_s: float
) -> list[NodeView]:
    """Nodes outside ``avoid`` that served a queue of ``chain`` and went silent (not stopped, not draining)
    within ``grace_s``: their processes' last heartbeats say what they served."""
    wanted = set(chain)
    return [
        n
        for n in nodes
        if not n.live
        and n.state == "silent"
        and n.node not in avoid
        and now - n.last_seen <= grace_s
        and any(q in wanted for beat in n.slots for q in beat.queues)
    ]


def load_policy(spec: str, config: RouterConfig) -> RoutingPolicy:
    """The policy ``spec`` names (``pkg.mod:Class``; empty: ``DefaultPolicy``), built with ``config``."""
    if not spec:
        return DefaultPolicy(config)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError("BURROW_ROUTING_POLICY", f"{spec!r} is not of the form package.module:Class")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigError("BURROW_ROUTING_POLICY", f"cannot load {spec!r}: {e}") from None
    policy = factory(config)
    if not callable(getattr(policy, "decide", None)):
        raise ConfigError("BURROW_ROUTING_POLICY", f"{spec!r} has no decide(request, history, nodes, topology, now)")
    return policy
