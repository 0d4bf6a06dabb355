"""The router's background duties: bring dead letters to the router, and close the records dead nodes left.

Dead letters (``Q.XQ``) are raw messages of the job's actor, which the router process does not have (and
must not: Dramatiq would start consuming the work queues), so they cannot be consumed as Dramatiq
messages. The forwarder takes each with ``basic.get`` on a transactional channel and publishes a
``dead_letter`` report for it to ``failed-jobs`` in the same commit as its ack: moved once, never lost.

A node that vanished leaves its running jobs' attempts open. Usually the broker redelivers those jobs and
the next node closes them; the sweep closes them as soon as the registry shows the node gone (silent, not
stopped cleanly), so a record never says *running* for a job nobody runs.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable

import dramatiq
import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.common import xq_name

from node.contract.queues import DETAIL_HEADER, FAILED_JOBS_ACTOR, FAILED_JOBS_QUEUE, death_reason
from node.contract.record import JobStatus, set_status, status_of
from node.errors import CorruptRecord
from node.storage.records import RecordStore

from ..registry import NodeRegistry

logger = logging.getLogger(__name__)


def dead_letter_report(queue: str, body: bytes, properties: pika.BasicProperties) -> Message:
    """The ``failed-jobs`` message that brings a dead letter of ``queue`` to the router."""
    headers = properties.headers or {}
    detail = headers.get(DETAIL_HEADER) or ""
    kwargs = {
        "kind": "dead_letter",
        "queue": queue,
        "dead_letter_reason": death_reason(headers) or "unknown",
        "detail": detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail),
        "message_id": properties.message_id,
    }
    try:
        kwargs["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        kwargs["body_b64"] = base64.b64encode(body).decode()
    return Message(queue_name=FAILED_JOBS_QUEUE, actor_name=FAILED_JOBS_ACTOR, args=(), kwargs=kwargs, options={})


class Housekeeping(dramatiq.Middleware):
    """Runs the forwarder and the sweep in one thread of each router process, every ``interval_s``.

    Parameters:
        registry: The node registry (dead nodes; without a topology, the queues nodes serve).
        records: The job records.
        queues: The logical work queues whose dead letters to forward (``None``: those the registry's nodes
            serve), besides ``failed-jobs`` itself.
        interval_s: Pause between rounds when there was nothing to do.
    """

    def __init__(
        self,
        *,
        registry: NodeRegistry,
        records: RecordStore,
        queues: list[str] | None,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.records = records
        self.queues = queues
        self.interval_s = interval_s
        self.clock = clock
        self._stop = threading.Event()
        self._swept: set[tuple[str, float]] = set()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.broker = broker
        self._thread = threading.Thread(target=self._loop, name="burrow-router-housekeeping", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()

    def _loop(self) -> None:
        connection = None
        while not self._stop.is_set():
            moved = 0
            try:
                if connection is None or connection.is_closed:
                    connection = pika.BlockingConnection(self.broker.parameters)
                moved = self.forward(connection)
                self.sweep()
            except Exception as e:  # the broker or storage is away: try again next round
                logger.warning("Router housekeeping round failed (%s: %s).", type(e).__name__, e)
                connection = None
            if not moved:
                self._stop.wait(self.interval_s)
        if connection is not None and connection.is_open:
            connection.close()

    def work_queues(self) -> list[str]:
        if self.queues is not None:
            names = list(self.queues)
        else:
            names = sorted({q for view in self.registry.nodes().values() for beat in view.slots for q in beat.queues})
        return [*names, FAILED_JOBS_QUEUE]

    def forward(self, connection: pika.BlockingConnection) -> int:
        """Move every dead letter waiting now to ``failed-jobs``; returns how many were moved."""
        moved = 0
        for queue in self.work_queues():
            channel = connection.channel()
            try:
                channel.tx_select()
                source = self.broker.physical(xq_name(queue))
                while not self._stop.is_set():
                    method, properties, body = channel.basic_get(source, auto_ack=False)
                    if method is None:
                        break
                    report = dead_letter_report(queue, body, properties)
                    channel.basic_publish(
                        "",
                        self.broker.physical(FAILED_JOBS_QUEUE),
                        report.encode(),
                        pika.BasicProperties(delivery_mode=2, message_id=report.message_id),
                    )
                    channel.basic_ack(method.delivery_tag)
                    channel.tx_commit()
                    moved += 1
                    reason = report.kwargs["dead_letter_reason"]
                    logger.info("Dead letter of %s brought to the router (%s).", queue, reason)
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code != 404:  # 404: no such dead-letter queue (yet): nothing to forward
                    raise
            finally:
                if channel.is_open:
                    channel.close()
        return moved

    def sweep(self) -> None:
        """Close the open attempts that nodes gone silent left in their running jobs' records."""
        for view in self.registry.nodes().values():
            if view.state != "silent" or (view.node, view.last_seen) in self._swept:
                continue
            now = self.clock()
            for job_id in view.running:

                def close(record, node=view.node, now=now):
                    for entry in record["attempts"]:
                        if entry["outcome"] is None and entry.get("node") == node:
                            error = f"its node {node} went silent (registry)"
                            entry.update(outcome="lost", ended_at=now, error=error)
                            if status_of(record) is JobStatus.RUNNING:
                                set_status(record, JobStatus.QUEUED, reason=error)

                try:
                    if self.records.get(job_id) is None:
                        continue  # a short job records itself only at its end: nothing is open
                    self.records.update(job_id, close)
                except CorruptRecord as e:  # the job's next delivery dead-letters it; the others still close
                    logger.warning("Not closing node %s's attempt of job %s: %s", view.node, job_id, e)
            self._swept.add((view.node, view.last_seen))
