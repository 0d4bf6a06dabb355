"""One attempt of one job, from the message's arrival to its ack: read the record, ask ``policy.decide``, do it.

Arrival: the record is read once (a short job writes nothing yet). A redelivered message means an earlier
attempt ended without an ack: the node's journal and the record say how (crashed here, killed for overrun,
or lost), the record is closed accordingly, and the job goes on with its counters updated in a *new* message
(the broker's delivery count starts again), so a crash loop reaches ``max_failures`` like any failure.
A *lease copy* (a job longer than the broker's ``consumer_timeout``, ``node.attempt.lease``) is looked at
instead: dropped, published again, or — its attempt silent for a whole check period — taken as the
redelivery of a job whose node vanished.

End: the checkpoint is flushed, the decision taken, the record written (one conditional write, fenced: an
older attempt only closes its own entry), then the job routed. All of it shares one deadline, which during a
shutdown is what is left of the grace period.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq import Message
from dramatiq.middleware import SkipMessage
from opentelemetry import trace

from .. import metrics
from ..contract.job_options import JobOptions
from ..contract.queues import DeadLetterReason
from ..contract.record import (
    RESULT_INLINE_MAX,
    JobStatus,
    Outcome,
    begin_attempt,
    cancel_requested,
    close_unexplained,
    end_attempt,
    mark_killed,
    set_status,
    status_of,
    succeeded_record,
)
from ..errors import CorruptRecord, InvalidInput, Preempted, StorageUnavailable, describe
from ..retrying import Deadline, deadline_scope, retry
from ..storage import Storage
from ..storage.records import RecordStore
from ..telemetry_on import metrics_on, tracing_on
from ..unique import unique_hex
from . import running
from .attempt import Attempt, JobSettings
from .context import Artifacts, AttemptContext, Inputs, JobCheckpoint
from .drain import wait_until_drained
from .journal import Evidence, Journal
from .lease import LeaseTiming, Verdict, verdict
from .monitor import Monitor
from .policy import SETTLE_DELAY_S, Action, Decision, decide
from .routing import next_message, route
from .stream import ChunkWriter

logger = logging.getLogger(__name__)

#: Exit code of a worker process killed because its job overran its reservation and ignored the stop.
EXIT_KILLED_OVERRUN = 4
#: During a shutdown, a handed-back job waits up to this long for every worker of the node to confirm it
#: stopped taking work (``node.attempt.drain``) ...
DRAIN_WAIT_S = 5.0
#: ... and without that word re-enters its queue this long after SIGTERM at the earliest.
HANDBACK_HOLD_S = 1.5


class AttemptRunner:
    """Runs attempts for the ``JobLifecycle`` middleware (see the module docstring).

    Parameters:
        storage: Where records, checkpoints and artifacts live.
        node_id: This node's id.
        instance: This node instance (changes when the node restarts; see ``node.attempt.journal``).
        slot_id: This worker's slot.
        journal: This worker's journal (``None``: no local evidence, every unexplained end is *lost*).
        slots_dir: The node's ``slots`` directory: a hand-back during a drain waits for its workers to stop.
        grace_s: The SIGTERM grace period: a shutdown's attempt ends must fit in it.
        end_budget_s: Time allowed to end an attempt (flush, record, publish) outside a shutdown.
        handback_flush_s: Longest wait for the last checkpoint upload when an attempt ends.
        record_after_s: Running time after which an attempt is recorded (earlier if it checkpoints).
        progress_every_s: Interval between progress writes.
        cancel_check_s: Interval between looks at a running job's record for a cancel request.
        hard_stop_s: How long past ``max_run_s`` a job may ignore ``should_stop`` before its process is killed.
        lease: When a long attempt acks its delivery early and renews a lease instead (``None``: the broker
            has no ``consumer_timeout``; ``node.attempt.lease.lease_timing``).
        clock: Wall clock (Unix seconds).
        rng: Random source for backoff jitter.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        node_id: str,
        instance: str = "",
        slot_id: str = "",
        journal: Journal | None = None,
        slots_dir: Path | None = None,
        grace_s: float = 25.0,
        end_budget_s: float = 120.0,
        handback_flush_s: float = 10.0,
        record_after_s: float = 2.0,
        progress_every_s: float = 10.0,
        cancel_check_s: float = 2.0,
        hard_stop_s: float | None = 30.0,
        lease: LeaseTiming | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.storage = storage
        self.records = RecordStore(storage)
        self.node_id = node_id
        self.instance = instance
        self.slot_id = slot_id
        self.journal = journal
        self.slots_dir = slots_dir
        self.grace_s = grace_s
        self.end_budget_s = end_budget_s
        self.handback_flush_s = handback_flush_s
        self.hard_stop_s = hard_stop_s
        self.lease = lease
        self.clock = clock
        self.rng = rng or random.Random()
        self.monitor = Monitor(
            record_after_s=record_after_s,
            progress_every_s=progress_every_s,
            cancel_check_s=cancel_check_s,
            hard_stop_s=hard_stop_s,
            on_overrun=self._kill_overrun,
            lease=lease,
        )
        self._local = threading.local()

    def budget(self) -> Deadline:
        """The time an ending attempt has: what is left of the grace period once shutdown began."""
        began = running.shutdown_began_at()
        if began is None:
            return Deadline(self.end_budget_s)
        return Deadline(max(1.0, 0.8 * self.grace_s - (time.monotonic() - began)))

    # -- arrival ------------------------------------------------------------------------------------------

    def arrive(self, broker: dramatiq.Broker, message: Message, settings: JobSettings) -> None:
        """Start an attempt, or carry out what else the job needs and raise ``SkipMessage`` (the ack)."""
        job = settings.job
        intake = _intake(broker)
        try:
            record, etag = self.records.read(job.job_id)
            if intake is not None:
                intake.worked()
            lease_lost = False
            if job.lease_of is not None:  # raises SkipMessage unless the attempt it guards went silent
                settings, lease_lost = self._look_at_lease(broker, message, settings, record), True
                job = settings.job
            evidence, outcome = self._unexplained(message, job, record, ended=lease_lost)
        except SkipMessage:
            raise
        except CorruptRecord as e:  # offering it again cannot help: set aside once, with the record named
            reason = f"record: {e}"
            logger.error("Job %s: %s; dead-lettering it.", job.job_id, reason)
            decision = Decision(Action.DEAD_LETTER, job, reason=reason, dead_letter_reason=DeadLetterReason.MALFORMED)
            self._carry_out(broker, message, decision)
            raise SkipMessage(reason) from None
        except Exception as e:
            logger.warning("Job %s could not start (%s); offering it again later.", job.job_id, e)
            if intake is not None and _storage_failed(e):
                intake.failed(e)  # before the ack below frees the consumer's prefetch for the next job
            self.not_started(broker, message, settings)
            raise SkipMessage(f"could not start: {e}") from None
        status = status_of(record)
        decision = self._decide(
            settings,
            status,
            outcome,
            delivery_count=getattr(message, "delivery_count", 0),
            live_duplicate=bool(evidence.running),
            cancelled=cancel_requested(record),
        )
        if decision.action is Action.RUN:
            self._start(broker, message, settings, (record, etag))
            return
        if outcome is not None or decision.status is not None or decision.action is Action.SETTLE:
            self._record_arrival(message, settings, decision, evidence, (record, etag))
        if self.journal is not None and outcome is not None:
            self.journal.forget(job.job_id)
        logger.info("Job %s: %s (%s).", job.job_id, decision.action.value, decision.reason)
        self._carry_out(broker, message, decision, attempts=(record or {}).get("attempts"))
        self._notify(broker, job, decision, record)
        raise SkipMessage(decision.reason)

    def _look_at_lease(
        self, broker: dramatiq.Broker, message: Message, settings: JobSettings, record: dict[str, Any] | None
    ) -> JobSettings:
        """A lease copy: drop it, or publish it again for a later look (raising ``SkipMessage``), or — the
        attempt it guards went silent — return the job's settings without the lease: a job whose node
        vanished, to be handled like a redelivery."""
        job = settings.job
        assert job.lease_of is not None
        look = verdict(record, job.lease_of, job.lease_seen)
        if look.verdict is Verdict.LOST and self.journal is not None and self.journal.evidence(job.job_id).running:
            look = dataclasses.replace(look, verdict=Verdict.RENEW, reason="it still runs in a live process here")
        if look.verdict is Verdict.LOST:
            logger.warning("Job %s: %s; its node is gone, running it again.", job.job_id, look.reason)
            return dataclasses.replace(settings, job=job.replace(lease_of=None, lease_seen=0))
        if look.verdict is Verdict.RENEW:
            copy = next_message(message, job.replace(lease_seen=look.renewals))
            broker.enqueue(copy, delay=int(look.check_every_s * 1000))
        elif look.verdict is Verdict.UNKNOWN:  # a lease copy no node published: set aside, never dropped
            reason = f"a lease copy that guards nothing: {look.reason}"
            logger.error("Job %s: %s; dead-lettering it.", job.job_id, reason)
            decision = Decision(Action.DEAD_LETTER, job, reason=reason, dead_letter_reason=DeadLetterReason.STALE)
            self._carry_out(broker, message, decision)
        logger.debug("Lease copy of job %s: %s (%s).", job.job_id, look.verdict.value, look.reason)
        raise SkipMessage(f"lease {look.verdict.value}: {look.reason}")

    def not_started(self, broker: dramatiq.Broker, message: Message, settings: JobSettings) -> None:
        """Offer a job that could not start (storage or broker trouble) again later; nothing is counted."""
        self._local.attempt = None
        self._carry_out(broker, message, self._decide(settings, None, Outcome.NOT_STARTED))

    def _unexplained(
        self, message: Message, job: JobOptions, record: dict[str, Any] | None, *, ended: bool = False
    ) -> tuple[Evidence, Outcome | None]:
        """How the job's previous attempt ended, when this delivery (or, ``ended``, its lease) says it ended
        without an ack."""
        redelivered = ended or bool(getattr(message, "redelivered", False)) or getattr(message, "delivery_count", 0) > 0
        if not redelivered or status_of(record) is JobStatus.SUCCEEDED:
            return Evidence(), None
        evidence = self.journal.evidence(job.job_id) if self.journal is not None else Evidence()
        if evidence.running:
            return evidence, None
        open_entries = [a for a in (record or {}).get("attempts", []) if a["outcome"] is None]
        if evidence.killed or any(a.get("killed") for a in open_entries):
            return evidence, Outcome.TIMED_OUT
        if evidence.crashed:
            return evidence, Outcome.CRASHED
        return evidence, Outcome.LOST

    def _decide(
        self,
        settings: JobSettings,
        status: JobStatus | None,
        outcome: Outcome | None,
        *,
        delivery_count: int = 0,
        live_duplicate: bool = False,
        cancelled: bool = False,
        job: JobOptions | None = None,
    ) -> Decision:
        job = job or settings.job
        if job.expires_at is None and settings.expires_at is not None:
            # Stamp the expiry an actor's ttl_s gave it: the router, which has no actors, must see it too.
            job = job.replace(expires_at=settings.expires_at)
        return decide(
            job,
            limits=settings.limits,
            status=status,
            outcome=outcome,
            now=self.clock(),
            node_id=self.node_id,
            expires_at=settings.expires_at,
            delivery_count=delivery_count,
            live_duplicate=live_duplicate,
            cancelled=cancelled,
            jitter=self.rng.random(),
        )

    def _record_arrival(
        self,
        message: Message,
        settings: JobSettings,
        decision: Decision,
        evidence: Evidence,
        known: tuple[dict[str, Any] | None, str | None],
    ) -> None:
        now = self.clock()
        job = settings.job

        def update(record: dict[str, Any]) -> None:
            for entry in evidence.entries:  # attempts that died before they recorded themselves (idempotent)
                begin_attempt(
                    record,
                    {
                        "attempt_id": entry.attempt_id,
                        "node": self.node_id,
                        "instance": entry.instance,
                        "pid": entry.pid,
                        "started_at": entry.started_at,
                    },
                )
            close_unexplained(record, now=now, crashed_here=evidence.crashed, killed_here=evidence.killed)
            if decision.action is Action.SETTLE:
                attempt_id = job.unrecorded_success or ""
                keys = {
                    k.rsplit("/", 1)[-1]: k for k in self.storage.list(f"jobs/{job.job_id}/artifacts/{attempt_id}/")
                }
                end_attempt(
                    record,
                    attempt_id,
                    outcome=Outcome.SUCCEEDED,
                    error=None,
                    now=now,
                    status=JobStatus.SUCCEEDED,
                    artifacts=keys,
                    entry_if_missing={"node": self.node_id, "started_at": now},
                )
            elif decision.status is not None and status_of(record) is not decision.status:
                set_status(record, decision.status, reason=decision.reason)

        try:
            self.records.update(job.job_id, update, actor=message.actor_name, queue=message.queue_name, known=known)
        except Exception as e:
            if _storage_failed(e):  # (down, full, refusing: one line, not a traceback)
                logger.error("Could not record what happened to job %s: %s", job.job_id, e)
            else:
                logger.exception("Could not record what happened to job %s.", job.job_id)
            if decision.action is Action.SETTLE:
                raise

    # -- running ------------------------------------------------------------------------------------------

    def _start(
        self,
        broker: dramatiq.Broker,
        message: Message,
        settings: JobSettings,
        known: tuple[dict[str, Any] | None, str | None],
    ) -> None:
        job = settings.job
        attempt_id = unique_hex()
        record = known[0]
        number = max((a["number"] for a in record["attempts"]), default=0) + 1 if record else 1
        attempt: Attempt

        def parts(context: AttemptContext) -> tuple[JobCheckpoint, Artifacts, Inputs, ChunkWriter | None]:
            # Built on the actor's first use (``AttemptContext``): a short job mostly uses none of them.
            checkpoint = JobCheckpoint(
                self.storage,
                job.job_id,
                context.attempt,
                every_s=settings.checkpoint_every_s,
                started_at=attempt.started_monotonic,
                claim=attempt.claim,
                on_fenced=lambda: context.request_stop("fenced"),
            )
            # Any job may stream (a reader needs only its id); the writer costs nothing until the first chunk.
            checkpoint.stream = ChunkWriter(broker, job.job_id) if hasattr(broker, "publish_plain") else None
            return checkpoint, Artifacts(self.storage, job.job_id, attempt_id), Inputs(self.storage), checkpoint.stream

        context = AttemptContext(
            options=job, attempt=number, attempt_id=attempt_id, node_id=self.node_id, slot=self.slot_id, parts=parts
        )
        attempt = Attempt(self, message, settings, context, known)
        attempt.broker = broker
        if self.journal is not None:
            self.journal.started(job.job_id, attempt_id, started_at=attempt.started_at)
        if metrics_on():
            attempt.labels = metrics.labels_of(job, message.queue_name, message.actor_name)
            metrics.in_flight.add(1, attempt.labels)
            if number == 1:  # from submit to the first start (a retry's message keeps the submit time)
                wait_s = max(0.0, attempt.started_at - message.message_timestamp / 1000)
                metrics.queue_wait.record(wait_s, attempt.labels)
        attempt.token = running.enter(context, message.queue_name)
        self._local.attempt = attempt
        self.monitor.watch(attempt)
        # Per-job lines at DEBUG: at thousands of short jobs a second, logging them costs more than the job.
        logger.debug("Job %s attempt %d started (%s).", job.job_id, number, message.actor_name)

    # -- end ----------------------------------------------------------------------------------------------

    def finish(
        self, broker: dramatiq.Broker, message: Message, exception: BaseException | None, result: Any = None
    ) -> None:
        """End the running attempt of ``message`` (from ``after_process_message``; ``result``: what the actor
        returned)."""
        attempt: Attempt | None = getattr(self._local, "attempt", None)
        if attempt is None or attempt.message.message_id != message.message_id:
            return
        self._local.attempt = None
        self.monitor.forget(attempt)  # first: no reservation kill and no record write from here on
        context = attempt.context
        running.leave(context, attempt.token)
        with deadline_scope(self.budget()) as deadline:
            try:
                self._end(broker, message, attempt, exception, deadline, result)
            except Exception:
                # Out of this hook, Dramatiq would log the error and ack: a job with no successor, its record
                # still saying it runs. Unless it was sent on already, reject it: the broker dead-letters it
                # and the router, which reads its record, takes it from there.
                if attempt.sent_on:  # (only telling its waiting submitter or stream readers failed)
                    logger.exception(
                        "Job %s attempt %d: its end could not be announced.", context.job_id, context.attempt
                    )
                else:
                    logger.exception(
                        "Job %s attempt %d could not be ended; rejecting its message (it goes to the dead letters).",
                        context.job_id,
                        context.attempt,
                    )
                    message.fail()
            finally:
                if context.built:
                    context.checkpoint.close()
                if self.journal is not None:
                    self.journal.finished()

    def skipped(self, broker: dramatiq.Broker, message: Message) -> None:
        """A later middleware skipped a message after its attempt began: end it as not started."""
        attempt: Attempt | None = getattr(self._local, "attempt", None)
        if attempt is not None and attempt.message.message_id == message.message_id:
            self.finish(broker, message, _NotStarted())

    def _end(
        self,
        broker: dramatiq.Broker,
        message: Message,
        attempt: Attempt,
        exception: BaseException | None,
        deadline: Deadline,
        result: Any = None,
    ) -> None:
        context = attempt.context
        outcome = _outcome(context, exception, attempt.settings.throws)
        if _storage_failed(exception) and (intake := _intake(broker)) is not None:
            intake.failed(exception, writing=True)  # take no other job until storage answers
        if attempt.labels is not None:  # metered from its start
            metrics.in_flight.add(-1, attempt.labels)
            ended = {**attempt.labels, "outcome": outcome.value}
            metrics.attempts.add(1, ended)
            metrics.run_duration.record(max(0.0, self.clock() - attempt.started_at), ended)
        if tracing_on():
            trace.get_current_span().set_attribute("burrow.outcome", outcome.value)
        kept_result: dict[str, Any] | None = None
        if outcome is Outcome.SUCCEEDED and result is not None:
            try:
                kept_result = self._keep_result(context, result)
            except (TypeError, ValueError, RecursionError) as e:
                outcome, exception = Outcome.FAILED, TypeError(f"its return value is not JSON: {e}")
            except Exception as e:  # (result.json, past the storage's patience) never out of the hook: that acks
                problem = f"its return value could not be stored: {type(e).__name__}: {e}"
                outcome, exception = Outcome.FAILED, RuntimeError(problem)
        built = context.built  # the actor used its checkpoint, artifacts, inputs or stream (no more use now)
        if (
            built
            and outcome not in (Outcome.FENCED, Outcome.SUCCEEDED, Outcome.NOT_STARTED)
            and not context.checkpoint.flush(min(self.handback_flush_s, deadline.remaining() / 2))
        ):
            logger.warning("Job %s: last checkpoint not stored in time.", context.job_id)
        decision = self._decide(attempt.settings, JobStatus.RUNNING, outcome, job=context.options)
        error = None if exception is None else describe(exception)
        if outcome is Outcome.INVALID_INPUT:  # raised InvalidInput, or an exception in the actor's throws
            reason = (
                "invalid input: " + describe(exception, 1986, with_type=False)
                if isinstance(exception, InvalidInput)
                else f"{describe(exception, 1950)} (in the actor's throws: not retried)"
            )
            decision = dataclasses.replace(decision, reason=reason)
        began = running.shutdown_began_at()
        if decision.action is Action.HAND_BACK and began is not None:
            # Not back in the queue before every consumer of this draining node has stopped, or one of them
            # would take it (and the broker would count a delivery when the drain returns it): the workers say
            # when they have (``node.attempt.drain``); without word in time, a fixed hold stands in.
            wait_s = min(DRAIN_WAIT_S, deadline.remaining() / 4)
            if self.slots_dir is not None and wait_until_drained(self.slots_dir, wait_s):
                decision = dataclasses.replace(decision, delay_s=0.0)
            else:
                hold_s = max(0.25, HANDBACK_HOLD_S - (time.monotonic() - began))
                decision = dataclasses.replace(decision, delay_s=hold_s)
        now = self.clock()
        chosen = [decision]

        def end(record: dict[str, Any]) -> bool:
            final = decision
            if cancel_requested(record) and outcome is not Outcome.SUCCEEDED and decision.action is not Action.DROP:
                final = self._decide(attempt.settings, JobStatus.RUNNING, outcome, job=context.options, cancelled=True)
            chosen[0] = final
            return end_attempt(
                record,
                context.attempt_id,
                outcome=outcome,
                error=error,
                now=now,
                status=final.status,
                reason=final.reason,
                checkpoint=context.checkpoint.uploaded if built else None,
                progress=context.progress_value,
                artifacts=context.artifacts.keys if outcome is Outcome.SUCCEEDED and built else None,
                result=kept_result,
                entry_if_missing=attempt.entry(),
            )

        record: dict[str, Any] | None = None
        try:
            record = self._create_succeeded(message, attempt, decision, now, kept_result) if not built else None
            if record is not None:
                newest = True
            else:
                record, newest = retry(
                    lambda: self.records.update(
                        context.job_id, end, actor=message.actor_name, queue=message.queue_name, known=attempt.known
                    ),
                    deadline=deadline,
                    what=f"Recording the end of job {context.job_id}",
                    give_up_on=(CorruptRecord,),
                )
                decision = chosen[0]
            if not newest and decision.action is not Action.DROP:
                decision = Decision(Action.DROP, decision.job, reason="a newer attempt owns the job")
            if (intake := _intake(broker)) is not None:
                intake.worked(writing=True)
        except Exception as e:
            logger.error("Could not record the end of job %s attempt %d: %s", context.job_id, context.attempt, e)
            if _storage_failed(e) and (intake := _intake(broker)) is not None:
                intake.failed(e, writing=True)
            if decision.action is Action.SUCCEED:
                # The results are stored; only the record is missing. The next delivery records the success.
                decision = Decision(
                    Action.RETRY,
                    decision.job.replace(unrecorded_success=context.attempt_id),
                    reason="success not recorded yet",
                    delay_s=SETTLE_DELAY_S,
                )
        level = logging.DEBUG if outcome is Outcome.SUCCEEDED else _LOG_LEVEL_OF.get(outcome, logging.WARNING)
        if logger.isEnabledFor(level):  # (its arguments cost more than a short job's other log calls)
            logger.log(
                level,
                "Job %s attempt %d %s: %s (%s).",
                context.job_id,
                context.attempt,
                outcome.value,
                decision.action.value,
                decision.reason,
            )
        self._carry_out(broker, message, decision, error=error, attempts=(record or {}).get("attempts"))
        attempt.sent_on = True
        if record is not None:
            self._notify(broker, decision.job, decision, record, context.stream if built else None)

    def _create_succeeded(
        self, message: Message, attempt: Attempt, decision: Decision, now: float, result: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """A short job's one record write: the job had no record when it arrived and its attempt, which
        succeeded, wrote none since, so the record is created closed (``succeeded_record``) if it still has
        none. ``None`` when that does not apply or a record appeared meanwhile (a cancel, another attempt):
        then the read-modify-write of ``end_attempt`` decides. Storage errors are left to that path too, which
        retries within the attempt's deadline."""
        if decision.action is not Action.SUCCEED or attempt.known is None or attempt.known[0] is not None:
            return None
        context = attempt.context
        record = succeeded_record(
            context.job_id,
            attempt.entry(),
            actor=message.actor_name,
            queue=message.queue_name,
            now=now,
            reason=decision.reason,
            progress=context.progress_value,
            result=result,
        )
        try:
            if self.records.create(record):
                return record
        except Exception as e:
            logger.debug("Job %s: creating its record failed (%s); reading it first.", context.job_id, e)
        attempt.known = None  # what was read on arrival is stale: the read-modify-write reads it again
        return None

    def _keep_result(self, context: AttemptContext, result: Any) -> dict[str, Any]:
        """How the record keeps the actor's return value: inline if small, else as artifact ``result.json``."""
        body = json.dumps(result, separators=(",", ":"), allow_nan=False)
        if len(body) <= RESULT_INLINE_MAX:
            return {"value": json.loads(body)}
        context.artifacts.put("result.json", body.encode())
        return {"artifact": "result.json"}

    def _notify(
        self,
        broker: dramatiq.Broker,
        job: JobOptions,
        decision: Decision,
        record: dict[str, Any] | None,
        stream: ChunkWriter | None = None,
    ) -> None:
        """Tell a waiting submitter (``reply_to``) and a stream's readers that the job is over, once its record
        says so. Best effort: the record is the durable copy that a caller falls back on."""
        final = decision.status in (JobStatus.SUCCEEDED, JobStatus.EXPIRED, JobStatus.CANCELLED) or (
            decision.status is JobStatus.FAILED and decision.action is Action.DEAD_LETTER
        )
        if not final or decision.status is None:
            return
        record = record or {}
        try:
            if job.reply_to:
                reply = {
                    "job_id": job.job_id,
                    "status": decision.status.value,
                    "reason": decision.reason,
                    "result": record.get("result"),
                    "artifacts": record.get("artifacts") or {},
                }
                broker.publish_plain(job.reply_to, json.dumps(reply).encode(), must_route=False)
            if hasattr(broker, "publish_plain") and (job.job_type == "stream" or (stream and stream.next_seq)):
                (stream or ChunkWriter(broker, job.job_id)).end(decision.status.value, decision.reason)
        except Exception as e:
            logger.warning("Could not tell the submitter of job %s it is %s: %s", job.job_id, decision.status, e)

    def _carry_out(
        self,
        broker: dramatiq.Broker,
        message: Message,
        decision: Decision,
        *,
        error: str | None = None,
        attempts: list[dict[str, Any]] | None = None,
    ) -> None:
        if metrics_on():
            labels = metrics.labels_of(decision.job, message.queue_name, message.actor_name)
            status = decision.status.value if decision.status is not None else ""
            metrics.decisions.add(1, {**labels, "action": decision.action.value, "status": status})
        try:
            route(broker, message, decision, node_id=self.node_id, error=error, attempts=attempts)
        except Exception:
            # Never ack a job without a successor: reject it, so the broker dead-letters it.
            logger.exception(
                "Could not send job %s on (%s); rejecting the message.", decision.job.job_id, decision.action.value
            )
            message.fail()

    def _kill_overrun(self, attempt: Attempt) -> None:
        """The job ignored ``should_stop`` past its reservation: note it, then end the process."""
        context = attempt.context
        error = f"killed: still running {self.hard_stop_s}s after its max_run_s ({attempt.max_run_s}s)"
        logger.error(
            "Job %s attempt %d ignored its reservation stop; killing its worker process.",
            context.job_id,
            context.attempt,
        )
        try:
            if self.journal is not None:
                self.journal.started(context.job_id, context.attempt_id, killed=error, started_at=attempt.started_at)

            def killed(record: dict[str, Any]) -> None:
                begin_attempt(record, attempt.entry())  # idempotent: a no-op once the attempt is recorded
                mark_killed(record, context.attempt_id, error)

            retry(lambda: self.records.update(context.job_id, killed), deadline=Deadline(5), what="Recording a kill")
        except Exception:
            logger.exception("Could not record the kill of job %s.", context.job_id)
        finally:
            logging.shutdown()
            os._exit(EXIT_KILLED_OVERRUN)


#: How an attempt's end is logged, by outcome (others at WARNING): per-job lines at DEBUG, not to cost more
#: than a short job.
_LOG_LEVEL_OF = {Outcome.SUCCEEDED: logging.DEBUG, Outcome.INTERRUPTED: logging.INFO, Outcome.CANCELLED: logging.INFO}


class _NotStarted(Exception):
    """Stands for "skipped by another middleware" when an attempt is ended from ``after_skip_message``."""


def _outcome(
    context: AttemptContext, exception: BaseException | None, throws: tuple[type[BaseException], ...] = ()
) -> Outcome:
    """How an attempt ended, judged by its exception (``throws``: those the actor expects, never retried,
    as ``InvalidInput``) and why it was asked to stop (if it was)."""
    if context.stop_reason == "fenced" or (context.built and context.checkpoint.fenced):
        return Outcome.FENCED
    if exception is None:
        return Outcome.SUCCEEDED
    if context.stop_reason == "cancelled" and not isinstance(exception, _NotStarted):
        return Outcome.CANCELLED
    if isinstance(exception, _NotStarted):
        return Outcome.NOT_STARTED
    if isinstance(exception, InvalidInput) or (throws and isinstance(exception, throws)):
        return Outcome.INVALID_INPUT
    if context.stop_reason == "timeout":
        return Outcome.TIMED_OUT
    if isinstance(exception, Preempted) or context.stop_reason == "preempted":
        return Outcome.INTERRUPTED
    if _storage_failed(exception):  # (the store, not the job: handed back, as a preemption is)
        return Outcome.INTERRUPTED
    return Outcome.FAILED


def _intake(broker: dramatiq.Broker) -> Any:
    """The worker's ``node.broker.intake.Intake``, where its broker has one (a unit test's may not)."""
    return getattr(broker, "intake", None)


def _storage_failed(error: BaseException | None) -> bool:
    """Storage itself failed (down, refusing, full): not a lost race, a missing key or a damaged record,
    which it answered."""
    return isinstance(error, StorageUnavailable)
