"""Boot a worker process: settings, slot, broker, storage, then the actor modules.

Order matters: the process claims its slot and pins ``CUDA_VISIBLE_DEVICES`` *before* any actor module (and
so any CUDA library) is imported.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import dramatiq
from dramatiq.middleware import CurrentMessage

from . import context, metrics, worker_logs
from .attempt import drain
from .attempt.journal import Journal, process_start_time
from .attempt.lease import lease_timing
from .broker import QuorumRabbitmqBroker
from .contract.job_options import DEFAULT_SUBCLOUD
from .contract.topology import load_topology
from .errors import BurrowError, ConfigError, SlotError, StorageError
from .middleware import (
    AsyncActors,
    Callbacks,
    CancelListener,
    JobLifecycle,
    JobSubmission,
    NodeHeartbeat,
    Pipelines,
    Prefetch,
    Shutdown,
    SlotConsumer,
    Tracing,
)
from .settings import Settings, import_actor_modules
from .storage import Storage, storage_from_settings
from .supervisor.process import EXIT_BOOT_FAILED, EXIT_BOOT_RETRY, die_with_parent
from .supervisor.slots import SlotLease, configured_slots

logger = logging.getLogger("burrow.boot")


def node_instance(environ: Mapping[str, str]) -> str:
    """This node instance's id: the supervisor's (``BURROW_NODE_INSTANCE``), else the ``dramatiq`` master's.

    It changes when the node restarts, which is how a redelivery tells "its process crashed here" (same
    instance) from "the node went away" (see ``node.attempt.journal``).
    """
    if environ.get("BURROW_NODE_INSTANCE"):
        return environ["BURROW_NODE_INSTANCE"]
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot_id = "noboot"
    parent = os.getppid()
    return f"{boot_id}-{parent}-{process_start_time(parent)}"


def build_broker(
    settings: Settings,
    *,
    storage: Storage,
    slot_id: str,
    instance: str = "",
    journal: Journal | None = None,
    lease: SlotLease | None = None,
) -> QuorumRabbitmqBroker:
    """The node's broker with the node middleware stack.

    ``JobLifecycle`` replaces Dramatiq's ``Retries`` and ``AgeLimit`` (retries with cooldown through wait
    queues, TTL, records, checkpoints). Dramatiq's ``TimeLimit`` (10 minutes, and unable to interrupt C/CUDA
    code) and ``ShutdownNotifications`` (an async exception that may land after the work is done) are left
    out on purpose: ``max_run_s`` and ``Preemption`` ask the job to stop cooperatively instead. ``async def``
    actors run on Dramatiq's event loop thread, in their job's context (``AsyncActors``).
    """
    middleware = [
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        JobSubmission(),
        Tracing(),  # after JobSubmission (it traces the job options that creates), before the attempt's hooks
        JobLifecycle(
            storage=storage,
            clock=storage.now,  # expiry and record times by the store's clock where this machine's is off
            node_id=settings.node_id,
            instance=instance,
            slot_id=slot_id,
            journal=journal,
            slots_dir=settings.state_dir / "slots" if lease is not None else None,
            delivery_limit=settings.delivery_limit,
            grace_s=settings.grace_s,
            end_budget_s=settings.end_budget_s,
            # The final checkpoint must be stored, and the job re-published and acked, within the grace period.
            handback_flush_s=max(1.0, settings.grace_s / 2),
            # A job past max_run_s gets the grace period to checkpoint and stop before its process is killed.
            hard_stop_s=settings.grace_s,
            cancel_check_s=settings.cancel_check_s,
            lease=lease_timing(settings.consumer_timeout_s),  # the attempt's lease, not the slot's
        ),
        Shutdown(slots_dir=settings.state_dir / "slots" if lease is not None else None, slot_id=slot_id),
        AsyncActors(),
        Prefetch(prefetch=settings.prefetch),
        SlotConsumer(),
        CancelListener(storage=storage),
        NodeHeartbeat(
            node_id=settings.node_id,
            slot_id=slot_id,
            instance=instance,
            subcloud=settings.subcloud,
            models=settings.models,
            interval_s=settings.node_heartbeat_s,
            storage_clock=storage.now,
            on_beat=(
                (lambda beat: lease.publish_status(node_id=beat.node, state=beat.state, running=len(beat.running)))
                if lease is not None
                else None
            ),
        ),
    ]
    topology = load_topology(settings.topology) if settings.topology else None
    serves = topology.node_queues(settings.subcloud, settings.models) if topology else None
    if topology is None and settings.subcloud != DEFAULT_SUBCLOUD:
        logger.warning(
            "BURROW_SUBCLOUD=%s without a topology (BURROW_TOPOLOGY): there are no private pools, so this node "
            "serves every actor's queue, shared with every other node.",
            settings.subcloud,
        )
    return QuorumRabbitmqBroker(
        url=settings.amqp_url,
        delivery_limit=settings.delivery_limit,
        queue_prefix=settings.queue_prefix,
        heartbeat_s=settings.heartbeat_s,
        middleware=middleware,
        topology=topology,
        serves=serves,
        trusted_keys=settings.trusted(),
        ca_file=settings.amqp_ca_file,
    )


def claim_slot(settings: Settings, environ: MutableMapping[str, str]) -> SlotLease:
    """Claim this process's slot (the one ``BURROW_SLOT`` names, else the first free) and pin CUDA to it."""
    slots = configured_slots(settings.gpus, settings.cpu_slots, environ)
    lease = SlotLease.claim(slots, settings.state_dir, preferred=environ.get("BURROW_SLOT"))
    drain.forget_stopped(settings.state_dir / "slots", lease.slot.id)  # a predecessor's word says nothing now
    lease.pin(environ)
    try:
        lease.publish_status(node_id=settings.node_id)
    except OSError as e:  # (a full disk): the worker runs without it, as its heartbeat does
        logger.warning("Slot status not written: %s", e)
    atexit.register(lease.release)
    return lease


def start_telemetry(settings: Settings, slot_id: str, environ: Mapping[str, str]) -> None:
    """Traces and metrics as the ``OTEL_*`` variables say (``observability.setup``); off when none is set."""
    from observability.setup import configure

    labels = {"node": settings.node_id, "subcloud": settings.subcloud, "slot": slot_id}
    try:
        configure(
            "burrow-node",
            attributes={
                "burrow.node.id": settings.node_id,
                "burrow.subcloud": settings.subcloud,
                "burrow.slot": slot_id,
            },
            state_dir=settings.state_dir,
            discovery_name=slot_id,
            discovery_labels=labels,
            environ=environ,
        )
    except (ValueError, OSError) as e:
        raise BurrowError(f"telemetry: {e}") from None
    metrics.prime()


def boot(environ: MutableMapping[str, str] | None = None) -> QuorumRabbitmqBroker:
    """Set up this worker process and return its broker; exits the process with a clear message on bad config."""
    environ = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(environ)
        if environ.get("BURROW_SUPERVISED") == "1":
            # Our parent is the dramatiq master the supervisor started; if it dies, drain and go.
            die_with_parent()
        settings.ensure_state_dir()
        lease = claim_slot(settings, environ)
        storage = storage_from_settings(settings, check=True)
        instance = node_instance(environ)
        start_telemetry(settings, lease.slot.id, environ)
        journal = Journal(settings.state_dir / "journal", lease.slot.id, instance)
        broker = build_broker(
            settings, storage=storage, slot_id=lease.slot.id, instance=instance, journal=journal, lease=lease
        )
        dramatiq.set_broker(broker)
        worker_logs.install()
        context.install(context.NodeContext(settings=settings, storage=storage, slot=lease.slot))
        logger.info(
            "Node %s slot %s (CUDA_VISIBLE_DEVICES=%r) pid %d: broker %s, storage %r",
            settings.node_id,
            lease.slot.id,
            lease.slot.cuda_visible_devices,
            os.getpid(),
            settings.masked_amqp_url,
            storage,
        )
        # (as a ConfigError: Dramatiq would print a traceback and exit 2, which reads as transient)
        import_actor_modules(settings.actor_modules)
        if not broker.actors:  # (e.g. the package `actors` instead of its modules: the node would sit idle)
            raise ConfigError(
                "BURROW_ACTOR_MODULES",
                f"{', '.join(settings.actor_modules)} declare no actor: this node would take no job",
            )
        for queue_name in broker.work_queues():
            broker.declare_queue(queue_name, ensure=True)  # fail fast on a mismatched existing queue
        # The main thread only sleeps from here on: an idle connection would miss its heartbeats.
        del broker.connection
    except (SlotError, StorageError) as e:  # may pass: the supervisor restarts the worker
        logger.error("Cannot start worker yet: %s", e)
        sys.exit(EXIT_BOOT_RETRY)
    except BurrowError as e:
        logger.error("Cannot start worker: %s", e)
        sys.exit(EXIT_BOOT_FAILED)
    return broker
