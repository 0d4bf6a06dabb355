"""Heartbeat: every worker process announces itself in the node registry (``node.contract.registry``)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import dramatiq
import pika
import pika.exceptions

from ..attempt import running
from ..contract.registry import NODES_MAX_AGE, NODES_STREAM, Heartbeat

logger = logging.getLogger(__name__)


def burrow_version() -> str:
    try:
        return version("burrow")
    except PackageNotFoundError:
        return "dev"


def declare_nodes_stream(channel, prefix: str) -> str:
    """Declare the registry stream (idempotent) and return its name."""
    name = prefix + NODES_STREAM
    arguments = {"x-queue-type": "stream", "x-max-age": NODES_MAX_AGE, "x-stream-max-segment-size-bytes": 1_000_000}
    channel.queue_declare(queue=name, durable=True, arguments=arguments)
    return name


#: This machine's host name, in every heartbeat (``Heartbeat.host``).
_HOST = socket.gethostname()


class NodeHeartbeat(dramatiq.Middleware):
    """Publishes this worker process's ``Heartbeat`` every ``interval_s`` on its own connection, and a last
    one saying ``stopped`` when the worker shuts down cleanly.

    Its own connection and thread, so a long job or a busy consumer never delays a beat, and a broker hiccup
    only costs beats (it reconnects at the next one). A node that vanishes goes silent: readers time it out.

    Parameters:
        node_id: The node's id.
        slot_id: This process's slot.
        subcloud: The node's subcloud.
        models: The models it serves (empty: all of its subcloud's).
        instance: This node instance (``node.boot.node_instance``).
        interval_s: Seconds between beats (0 disables the registry for this process).
        clock: Wall clock (Unix seconds).
        storage_clock: The store's clock (``Storage.now``): each beat says how far this machine's is off it.
        on_beat: Also called with each heartbeat, broker or not (the worker's slot status file, which the
            supervisor reads for the slot-state metric).
    """

    def __init__(
        self,
        *,
        node_id: str,
        slot_id: str,
        subcloud: str,
        models: tuple[str, ...] = (),
        instance: str = "",
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        storage_clock: Callable[[], float] | None = None,
        on_beat: Callable[[Heartbeat], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.slot_id = slot_id
        self.subcloud = subcloud
        self.models = models
        self.instance = instance
        self.interval_s = interval_s
        self.clock = clock
        self.storage_clock = storage_clock
        self._intake = None  # the broker's (``node.broker.intake``): whether this worker takes jobs
        self.on_beat = on_beat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: pika.BlockingConnection | None = None
        self._lock = threading.Lock()
        self._queues: tuple[str, ...] = ()
        self._threads = 1
        self._version = burrow_version()
        self._parameters = None
        self._prefix = ""
        self._stream = ""

    def heartbeat(self, state: str | None = None) -> Heartbeat:
        if state is None:
            state = "draining" if running.shutdown_began_at() is not None else "up"
        jobs = running.running_jobs()
        now = self.clock()
        offset = round(self.storage_clock() - time.time(), 1) if self.storage_clock is not None else 0.0
        return Heartbeat(
            node=self.node_id,
            process=f"{self.slot_id}/{os.getpid()}",
            instance=self.instance,
            host=_HOST,
            slot=self.slot_id,
            subcloud=self.subcloud,
            models=self.models,
            queues=self._queues,
            threads=self._threads,
            running=tuple(job_id for job_id, _ in jobs),
            running_queues=tuple(queue for _, queue in jobs),
            state=state,
            version=self._version,
            at=now,
            interval_s=self.interval_s,
            clock_offset_s=offset or 0.0,  # (no -0.0)
            storage_failing=bool(self._intake is not None and self._intake.closed),
        )

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.interval_s <= 0:
            self._tell(self.heartbeat())  # the slot status still says the worker is up
            return
        work_queues = getattr(broker, "work_queues", None)
        self._queues = tuple(work_queues() if work_queues else sorted(broker.get_declared_queues()))
        self._threads = worker.worker_threads
        self._intake = getattr(broker, "intake", None)
        self._parameters = broker.parameters
        self._prefix = getattr(broker, "queue_prefix", "")
        self._thread = threading.Thread(target=self._loop, name="burrow-heartbeat", daemon=True)
        self._thread.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=max(1.0, self.interval_s))
        self._publish(self.heartbeat("stopped"))
        self._close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            beat = self.heartbeat()
            self._tell(beat)
            self._publish(beat)
            self._stop.wait(self.interval_s)

    def _tell(self, beat: Heartbeat) -> None:
        if self.on_beat is not None:
            try:
                self.on_beat(beat)
            except OSError as e:  # a full disk must not stop the registry
                logger.warning("Slot status not written: %s", e)

    def _publish(self, beat: Heartbeat) -> None:
        with self._lock:
            try:
                if self._connection is None or self._connection.is_closed:
                    self._connection = pika.BlockingConnection(self._parameters)
                    channel = self._connection.channel()
                    channel.confirm_delivery()
                    self._stream = declare_nodes_stream(channel, self._prefix)
                    self._channel = channel
                self._channel.basic_publish(
                    exchange="",
                    routing_key=self._stream,
                    body=beat.encode(),
                    properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                )
            except (pika.exceptions.AMQPError, OSError) as e:
                logger.warning("Node heartbeat not sent (%s: %s); retrying at the next one.", type(e).__name__, e)
                self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # already gone: nothing to release
                pass
