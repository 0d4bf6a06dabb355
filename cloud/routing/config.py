"""The router's configuration (from the environment) and its assembly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dramatiq.middleware import CurrentMessage

from node.broker import QuorumRabbitmqBroker
from node.contract.topology import load_topology
from node.settings import Settings, _Reader
from node.storage import storage_from_settings
from node.storage.records import RecordStore

from ..registry import NodeRegistry
from .housekeeping import Housekeeping
from .outbox import TransactionalConsumer
from .policy import RouterConfig, load_policy
from .router import Router


def router_config(environ: Mapping[str, str]) -> tuple[RouterConfig, str]:
    """The default policy's knobs and the policy to load (``BURROW_ROUTING_POLICY``)."""
    r = _Reader(environ)
    defaults = RouterConfig()
    config = RouterConfig(
        max_redispatches=r.integer("BURROW_MAX_REDISPATCHES", defaults.max_redispatches, minimum=0),
        cooldown_s=r.number("BURROW_ROUTER_COOLDOWN_S", defaults.cooldown_s, minimum=0),
        avoid_delay_s=r.number("BURROW_ROUTER_AVOID_DELAY_S", defaults.avoid_delay_s, minimum=0),
        silent_grace_s=r.number("BURROW_ROUTER_SILENT_GRACE_S", defaults.silent_grace_s, minimum=0),
    )
    return config, r.text("BURROW_ROUTING_POLICY", "")


class RouterBroker(QuorumRabbitmqBroker):
    """The router's broker: its consumers commit each ack with what handling the message published."""

    @property
    def consumer_class(self):
        return TransactionalConsumer


def quarantine_count_s(environ: Mapping[str, str] | None = None) -> float:
    """How often the router counts the quarantine for its gauge (``BURROW_QUARANTINE_COUNT_S``, default 30):
    counting lists storage."""
    return _Reader(os.environ if environ is None else environ).number("BURROW_QUARANTINE_COUNT_S", 30.0, minimum=0)


def router_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where this machine's router processes keep local state (their metrics discovery files)."""
    return Settings.from_env(os.environ if environ is None else environ).state_dir


def build_router(environ: Mapping[str, str] | None = None) -> tuple[RouterBroker, Router]:
    """The router process's broker (with housekeeping) and its ``Router``."""
    environ = os.environ if environ is None else environ
    settings = Settings.from_env(environ)
    config, policy_spec = router_config(environ)
    policy = load_policy(policy_spec, config)
    topology = load_topology(settings.topology) if settings.topology else None
    storage = storage_from_settings(settings)
    broker = RouterBroker(
        url=settings.amqp_url,
        delivery_limit=settings.delivery_limit,
        queue_prefix=settings.queue_prefix,
        heartbeat_s=settings.heartbeat_s,
        middleware=[CurrentMessage()],
        topology=topology,
        ca_file=settings.amqp_ca_file,
    )
    # Nodes heartbeat every BURROW_NODE_HEARTBEAT_S: a fresher registry read than that tells nothing new.
    registry = NodeRegistry(broker.parameters, settings.queue_prefix, refresh_s=min(1.0, settings.node_heartbeat_s))
    broker.add_middleware(
        Housekeeping(
            registry=registry,
            records=RecordStore(storage),
            queues=topology.queue_names() if topology else None,
            interval_s=1.0,
        )
    )
    router = Router(
        broker=broker,
        storage=storage,
        registry=registry,
        policy=policy,
        topology=topology,
        signer=settings.signer(),
        trusted=settings.trusted(),
    )
    return broker, router
