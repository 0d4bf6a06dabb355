"""A running attempt: its job context and what the monitor and the end of the attempt need of it.

``JobSettings`` is how the lifecycle resolved an arriving job's options; ``Attempt`` writes its own record
entry (lazily: after ``record_after_s``, at its first checkpoint, or at its end) and its progress.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dramatiq import Message

from .. import unique
from ..contract.job_options import JobOptions
from ..contract.record import begin_attempt, cancel_requested, newest_attempt_id, release_attempt, renew_lease
from ..errors import FencedOut, InvalidTransition
from .context import AttemptContext
from .policy import Limits
from .routing import next_message

if TYPE_CHECKING:
    from .runner import AttemptRunner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSettings:
    """An arriving job's options as the lifecycle resolved them (message option → actor option → default)."""

    job: JobOptions
    limits: Limits
    expires_at: float | None
    max_run_s: float | None
    checkpoint_every_s: float
    throws: tuple[type[BaseException], ...] = ()  # exceptions the actor expects: never retried (Dramatiq's option)


class Attempt:
    """A running attempt: its context, and what the monitor and the end of the attempt need."""

    def __init__(
        self,
        runner: AttemptRunner,
        message: Message,
        settings: JobSettings,
        context: AttemptContext,
        known: tuple[dict[str, Any] | None, str | None],
    ) -> None:
        self.runner = runner
        self.message = message
        self.settings = settings
        self.context = context
        self.known: tuple[dict[str, Any] | None, str | None] | None = known  # the record as read on arrival
        self.started_at = runner.clock()
        self.started_monotonic = time.monotonic()
        self.labels: dict[str, Any] | None = None  # its metric labels (``node.metrics.labels_of``), if metered
        self.max_run_s = settings.max_run_s
        self.recorded = False
        self.lock = threading.Lock()
        self.token: Any = None
        self.broker: Any = None  # the broker it arrived through (set by the runner)
        self.released = False  # its delivery was acked early; it renews a lease (``node.attempt.lease``)
        self.sent_on = False  # its end was decided and carried out (the job sent on, or the message failed)
        self._progress_written: dict[str, Any] | None = None

    @property
    def job_id(self) -> str:
        return self.context.job_id

    def entry(self) -> dict[str, Any]:
        """This attempt's entry in the record."""
        return {
            "attempt_id": self.context.attempt_id,
            "node": self.runner.node_id,
            "instance": self.runner.instance,
            "slot": self.runner.slot_id,
            "pid": unique.pid,
            "message_id": self.message.message_id,
            "delivery_count": getattr(self.message, "delivery_count", 0),
            "started_at": self.started_at,
        }

    def request_stop(self, reason: str) -> None:
        self.context.request_stop(reason)

    def claim(self) -> int:
        """Record this attempt now (before its first checkpoint: the checkpoint fence is its number)."""
        with self.lock:
            if not self.recorded:
                self.write_record()
        if self.context.stop_reason == "fenced":
            raise FencedOut(f"job {self.job_id} is already final; attempt {self.context.attempt_id} may not write")
        return self.context.attempt

    def write_record(self) -> None:
        """Write this attempt's entry (and progress) into the record (call with ``lock`` held)."""
        progress = self.context.progress_value

        def begin(record: dict[str, Any]) -> int:
            number = begin_attempt(record, self.entry())
            if progress is not None and newest_attempt_id(record) == self.context.attempt_id:
                record["progress"] = progress
            return number

        try:
            _, number = self.runner.records.update(
                self.job_id, begin, actor=self.message.actor_name, queue=self.message.queue_name, known=self.known
            )
        except InvalidTransition as e:
            self.recorded = True
            self.context.request_stop("fenced")
            logger.warning("Job %s attempt %s cannot be recorded: %s", self.job_id, self.context.attempt_id, e)
            return
        self.known = None
        self.recorded = True
        self.context.attempt = number
        self._progress_written = progress

    @property
    def releasable(self) -> bool:
        """Whether its delivery can be acked early (a quorum broker's delivery, and a lease timing)."""
        return (
            self.runner.lease is not None
            and hasattr(self.broker, "release")
            and getattr(self.message, "_tag", None) is not None
        )

    def release(self) -> None:
        """Ack the delivery before the broker's ``consumer_timeout`` and leave a lease copy to guard the job
        (call with ``lock`` held; ``node.attempt.lease``)."""
        lease = self.runner.lease
        assert lease is not None
        if not self.recorded:
            self.write_record()
        if self.context.stop_reason == "fenced":
            return
        attempt_id = self.context.attempt_id
        _, ours = self.runner.records.update(
            self.job_id,
            lambda record: release_attempt(
                record, attempt_id, now=self.runner.clock(), renew_every_s=lease.renew_every_s
            ),
        )
        if not ours:
            self.context.request_stop("fenced")
            return
        copy = next_message(self.message, self.settings.job.replace(lease_of=attempt_id, lease_seen=0))
        self.broker.enqueue(copy, delay=int(lease.check_every_s * 1000))
        self.released = True  # from here the lease copy guards the job, acked or not
        if not self.broker.release(self.message):
            logger.warning("Job %s: the early ack of its delivery is not confirmed yet.", self.job_id)
        logger.info(
            "Job %s attempt %d runs past half the consumer timeout: delivery acked, lease checked every %.0fs.",
            self.job_id,
            self.context.attempt,
            lease.check_every_s,
        )

    def renew(self) -> None:
        """Renew the lease of a released attempt; one that lost it (declared lost, or superseded) stops."""
        attempt_id = self.context.attempt_id
        _, ours = self.runner.records.update(
            self.job_id, lambda record: renew_lease(record, attempt_id, now=self.runner.clock())
        )
        if not ours:
            logger.warning("Job %s attempt %s lost its lease; stopping it.", self.job_id, attempt_id)
            self.context.request_stop("fenced")

    def write_progress(self) -> None:
        progress = self.context.progress_value
        if progress is None or progress == self._progress_written:
            return

        def update(record: dict[str, Any]) -> None:
            if newest_attempt_id(record) == self.context.attempt_id:
                record["progress"] = progress

        self.runner.records.update(self.job_id, update)
        self._progress_written = progress

    def check_cancel(self) -> None:
        """Ask the job to stop (reason ``cancelled``) if its submitter cancelled it."""
        if cancel_requested(self.runner.records.get(self.job_id)):
            self.context.request_stop("cancelled")
