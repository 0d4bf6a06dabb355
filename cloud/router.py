"""The router entry point: ``dramatiq cloud.router`` (or ``burrow router``); several replicas are safe.

Importing this module sets up the router process: a broker whose only actor is ``route_failed_job`` on
``failed-jobs``, consumed through a transactional channel (``cloud.routing.outbox``), plus the housekeeping
thread that brings dead letters to it and closes records of vanished nodes (``cloud.routing.housekeeping``).
Configuration is the nodes' (``AMQP_URL``, ``BURROW_STORAGE_URL``, ``BURROW_TOPOLOGY``, ...) plus
``BURROW_ROUTING_POLICY``, ``BURROW_MAX_REDISPATCHES``, ``BURROW_ROUTER_COOLDOWN_S`` and
``BURROW_ROUTER_AVOID_DELAY_S`` (see ``cloud.routing.config``).
"""

from __future__ import annotations

import logging
import os
import sys

import dramatiq
from dramatiq.middleware import CurrentMessage
from opentelemetry import metrics

from node import worker_logs
from node.contract.queues import FAILED_JOBS_ACTOR, FAILED_JOBS_QUEUE
from node.errors import BurrowError
from observability.setup import configure

from .routing import gauges
from .routing.config import build_router, quarantine_count_s, router_state_dir

logger = logging.getLogger("burrow.router")

try:
    broker, router = build_router()
    try:
        telemetry = configure("burrow-router", discovery_name=f"router-{os.getpid()}", state_dir=router_state_dir())
        count_every_s = quarantine_count_s()
    except (ValueError, OSError) as e:
        raise BurrowError(f"telemetry: {e}") from None
except BurrowError as e:
    logger.error("Cannot start the router: %s", e)
    sys.exit(3)
if telemetry.metrics != "none":
    gauges.register(
        metrics.get_meter("burrow.router"),
        router.registry,
        router.quarantine,
        quarantine_every_s=count_every_s,
    )
dramatiq.set_broker(broker)
worker_logs.install()  # (a report's body is a job's arguments: never in the log)


@dramatiq.actor(queue_name=FAILED_JOBS_QUEUE, actor_name=FAILED_JOBS_ACTOR)
def route_failed_job(**report) -> None:
    """Place a job a node gave up (or a dead letter, or an operator's requeue): see ``cloud.routing.router``."""
    router.take(CurrentMessage.get_current_message())
