"""Cancel broadcast: a cancelled job running in this worker process is asked to stop at once.

A submitter's ``cancel()`` writes the request into the job's record, which a running job's node reads every
``BURROW_CANCEL_CHECK_S``; it then also publishes the job id on the ``burrow.cancel`` fanout exchange. Each
worker process binds a queue of its own to it (server-named, exclusive: gone with the connection) and, for a
job it runs, reads the record right away and stops the job if the record says so — a broadcast anyone with
publish rights could send is a hint, never an order. Missed broadcasts (a reconnect) cost nothing but the
wait for the next record read.
"""

from __future__ import annotations

import json
import logging
import threading

import dramatiq
import pika
import pika.exceptions

from ..attempt import running
from ..contract.queues import CANCEL_EXCHANGE
from ..contract.record import cancel_requested
from ..storage import Storage
from ..storage.records import RecordStore

logger = logging.getLogger(__name__)

#: Pause before the listener connects again after losing its connection.
RECONNECT_S = 2.0


class CancelListener(dramatiq.Middleware):
    """Listens for cancel broadcasts on its own connection and thread (see the module docstring).

    Parameters:
        storage: Where job records live (a broadcast is checked against the record).
        enabled: ``False`` turns the listener off (the record is still read every ``BURROW_CANCEL_CHECK_S``).
    """

    def __init__(self, *, storage: Storage, enabled: bool = True) -> None:
        self.records = RecordStore(storage)
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._parameters = None
        self._exchange = CANCEL_EXCHANGE

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        parameters = getattr(broker, "parameters", None)
        if not self.enabled or parameters is None:
            return
        self._parameters = parameters
        self._exchange = getattr(broker, "queue_prefix", "") + CANCEL_EXCHANGE
        # Bound before the consumers start (they start after this hook), so no job of this worker runs
        # unheard; a broker that does not answer now is tried again by the thread.
        try:
            connection = self._connect()
        except (pika.exceptions.AMQPError, OSError) as e:
            logger.warning("Cancel broadcasts not received yet (%s: %s).", type(e).__name__, e)
            connection = None
        self._thread = threading.Thread(target=self._run, args=(connection,), name="burrow-cancel", daemon=True)
        self._thread.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _connect(self) -> pika.BlockingConnection:
        connection = pika.BlockingConnection(self._parameters)
        try:
            channel = connection.channel()
            channel.exchange_declare(exchange=self._exchange, exchange_type="fanout", durable=True)
            queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue=queue, exchange=self._exchange)
            channel.basic_consume(queue=queue, on_message_callback=self._on_message, auto_ack=True)
        except BaseException:
            connection.close()
            raise
        return connection

    def _run(self, connection: pika.BlockingConnection | None) -> None:
        while not self._stop.is_set():
            try:
                if connection is None:
                    connection = self._connect()
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=0.5)
            except (pika.exceptions.AMQPError, OSError) as e:
                logger.warning("Cancel broadcasts not received (%s: %s); reconnecting.", type(e).__name__, e)
                self._stop.wait(RECONNECT_S)
            finally:
                if connection is not None and connection.is_open:
                    try:
                        connection.close()
                    except Exception:  # already gone: nothing to release
                        pass
                connection = None

    def _on_message(self, channel, method, properties, body: bytes) -> None:
        try:
            job_id = json.loads(body)["job_id"]
            contexts = running.contexts_of(job_id) if isinstance(job_id, str) else []
            if contexts and cancel_requested(self.records.get(job_id)):
                for context in contexts:
                    context.request_stop("cancelled")
        except Exception as e:  # a malformed broadcast, or storage trouble: the record read covers it
            logger.debug("Cancel broadcast ignored: %s", e)
