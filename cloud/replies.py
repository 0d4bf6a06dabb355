"""Where a submitter waits for sync jobs: one exclusive reply queue per client, read by one thread.

Why not RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``): its address exists only in the AMQP
properties of the first delivery, and the request must be published on the channel that consumes it. A Burrow
job is published again by whoever handles it next (a retry after a cooldown, a hand-back, the router), and a
node reads the job's options, not AMQP properties. So the reply address travels in the job options
(``reply_to``) and must be a queue any node can publish to by name: a server-named, exclusive queue, declared
once per client (not per request), deleted by the broker when the client goes. A reply that finds no queue is
dropped; the record stays the durable copy a caller falls back on.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pika
import pika.exceptions

from .errors import CloudError

logger = logging.getLogger(__name__)


class ReplyListener:
    """Receives replies on a queue of its own and wakes whoever waits for each job.

    Parameters:
        parameters: Connection parameters (one broker).
    """

    def __init__(self, parameters: pika.ConnectionParameters) -> None:
        self.parameters = parameters
        self.queue: str | None = None
        self._replies: dict[str, dict[str, Any]] = {}
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="burrow-replies", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self.queue is None:
            raise CloudError(f"cannot listen for replies: {self._error or 'the broker did not answer'}")

    def expect(self, job_id: str) -> threading.Event:
        """Register interest in ``job_id`` before it is published (its reply may come at once)."""
        with self._lock:
            event = self._waiting.setdefault(job_id, threading.Event())
            if job_id in self._replies:
                event.set()
            return event

    def take(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            self._waiting.pop(job_id, None)
            return self._replies.pop(job_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection = pika.BlockingConnection(self.parameters)
            except (pika.exceptions.AMQPError, OSError) as e:
                self._error = e
                if not self._ready.is_set():
                    self._ready.set()
                    return
                self._stop.wait(1.0)
                continue
            try:
                channel = connection.channel()
                # A new queue after a reconnect: jobs sent with the old name fall back to reading their record.
                self.queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
                channel.basic_consume(self.queue, self._on_reply, auto_ack=True)
                self._ready.set()
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=0.2)
            except (pika.exceptions.AMQPError, OSError) as e:
                logger.warning("Reply queue lost (%s); listening again.", e)
            finally:
                try:
                    connection.close()
                except Exception:  # already closed
                    pass

    def _on_reply(self, channel, method, properties, body: bytes) -> None:
        try:
            reply = json.loads(body)
            job_id = reply["job_id"]
        except (ValueError, KeyError, TypeError, RecursionError):
            logger.warning("Ignoring a malformed reply on %s.", self.queue)
            return
        with self._lock:
            if job_id in self._waiting:
                self._replies[job_id] = reply
                self._waiting[job_id].set()
