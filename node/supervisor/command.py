"""The ``burrow node`` command: plan the slots, hold the node's state directory, run the supervisor."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Mapping

from ..errors import NodeError
from ..settings import Settings
from ..storage import storage_from_settings
from . import resources
from .supervisor import Supervisor, plan_slots, worker_specs, worker_threads

logger = logging.getLogger("burrow.node")


def hold_state_dir(settings: Settings) -> int:
    """Lock ``<state_dir>/node.lock`` for this supervisor's lifetime; a second node on it is refused.

    Raises:
        NodeError: Another ``burrow node`` holds the directory.
    """
    settings.ensure_state_dir()
    fd = os.open(settings.state_dir / "node.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise NodeError(
            f"another `burrow node` is running on state directory {settings.state_dir} "
            "(BURROW_STATE_DIR); stop it, or give this node a directory of its own"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def run_node(settings: Settings, environ: Mapping[str, str], *, processes: int | None = None) -> int:
    """Run this machine's workers until SIGTERM/SIGINT; returns the exit code."""
    hold_state_dir(settings)
    storage_from_settings(settings, check=True)  # a store that cannot work: refused before any worker
    # A new node instance: evidence left by the previous one's workers says "interrupted", not "crashed".
    shutil.rmtree(settings.state_dir / "journal", ignore_errors=True)
    slots = plan_slots(settings, environ, processes)
    instance = uuid.uuid4().hex[:12]
    logger.info(
        "Node %s (instance %s): %d worker(s) on %s; broker %s",
        settings.node_id,
        instance,
        len(slots),
        ", ".join(s.id for s in slots),
        settings.masked_amqp_url,
    )
    supervisor = Supervisor(
        worker_specs(settings, slots, {**environ, "BURROW_NODE_INSTANCE": instance}, threads=worker_threads(settings)),
        grace_s=settings.grace_s,
        backoff_min_s=settings.restart_backoff_min_s,
        backoff_max_s=settings.restart_backoff_max_s,
        status_dir=settings.state_dir / "slots",
    )
    report_resources(settings, supervisor, [s.device for s in slots if s.device is not None], environ)
    supervisor.install_signal_handlers()
    return supervisor.run()


def report_resources(settings: Settings, supervisor: Supervisor, gpus: list[str], environ: Mapping[str, str]) -> None:
    """The node's resource metrics (``node.supervisor.resources``), when the ``OTEL_*`` variables export any.

    Raises:
        NodeError: The telemetry configuration is invalid.
    """
    from opentelemetry import metrics

    from observability.setup import configure

    try:
        telemetry = configure(
            "burrow-node",
            attributes={"burrow.node.id": settings.node_id, "burrow.subcloud": settings.subcloud},
            state_dir=settings.state_dir,
            discovery_name="node",  # the workers' files are named after their slots
            discovery_labels={"node": settings.node_id, "subcloud": settings.subcloud},
            environ=environ,
        )
    except (ValueError, OSError) as e:
        raise NodeError(f"telemetry: {e}") from None
    if telemetry.metrics != "none":
        resources.register(metrics.get_meter("burrow.node"), slots=supervisor.slot_states, gpus=resources.Gpus(gpus))
